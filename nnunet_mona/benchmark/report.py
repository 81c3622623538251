"""``results.md`` (protocol and tables) and ``results.png`` (bar chart) from the ``results.json`` dictionary."""
import os
from typing import List, Optional, Tuple

from nnunet_mona.benchmark.published import SOURCE


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _num(value: Optional[float], digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}" if abs(value) < 0.01 and value != 0 else \
        f"{value:.{digits}f}"


def _memory(record: dict) -> str:
    peak = (record or {}).get("peak_gpu_memory_bytes")
    return "n/a" if peak is None else f"{peak / 2 ** 30:.2f} GiB"


def _seconds(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    value = int(round(value))
    return f"{value // 3600}h{value % 3600 // 60:02d}m" if value >= 3600 else f"{value // 60}m{value % 60:02d}s"


EARLIER_MARK = "\u2020"  # dagger: a row kept from an earlier invocation (nnunet_mona.benchmark.earlier_rows)


def _row(run: dict) -> str:
    return run["trainer"] + (f" {EARLIER_MARK}" if run.get("earlier_command") else "")


def protocol_lines(results: dict) -> List[str]:
    p = results["protocol"]
    ev = p["evaluation"]
    batch = f", batch size {p['batch_size']}" if p.get("batch_size") is not None else ""
    patch = f", patch {' x '.join(map(str, p['patch_size']))}" if p.get("patch_size") else ""
    copy = f" (a copy of {p['source_plans']} with this batch size)" if p.get("source_plans") not in (None, p["plans"]) \
        else ""
    teachers = p.get("teacher_rows") or []
    model = ("EMA teacher (checkpoint_final_teacher.pth) for " + ", ".join(teachers) + "; the student "
             "(checkpoint_final.pth) for the other rows") if teachers else "the student (checkpoint_final.pth)"
    lines = [
        f"- dataset: {p['dataset_name']} (configuration {p['configuration']}, plans {p['plans']}{copy}{batch}{patch}, "
        f"fold {p['fold']}" + (f", in-plane downsampled x{p['inplane_downsample']}"
                               if (p.get("inplane_downsample") or 1) != 1 else "") + ")",
        f"- budget: {p['epochs']} epochs x {p['iterations_per_epoch']} iterations"
        f" (validation iterations per epoch: {p['val_iterations'] or 'nnU-Net default'}), same for every trainer",
        f"- device: {p['device']}" + (f" ({p['gpu_name']})" if p.get("gpu_name") else "") +
        f", {p['parallel']} training(s) at once; host {p['host']}",
        f"- seed: {p['seed'] if p['seed'] is not None else 'none (nnU-Net trains unseeded)'}",
        f"- evaluation: {ev['n_volumes']} volumes from {ev['labels']}; final checkpoint, no model selection: "
        f"{model}" + (f" (--checkpoint {p['checkpoint']})" if p.get("checkpoint") else "") +
        "; stock nnUNetv2_predict"
        f"{' without TTA' if p.get('disable_tta') else ' (with mirroring TTA)'}",
        f"- total wall time: {_seconds(p.get('wall_seconds_total'))} (this invocation; skipped steps cost nothing)",
        "- s/iteration: mean epoch time / training iterations per epoch (an epoch includes its validation "
        "iterations); peak GPU memory: torch.cuda.max_memory_allocated of the training process",
    ]
    if any(" + " in t for t in p["trainers"]):
        lines.append("- pretraining chains (A + B): every stage trains the budget above, starting from the previous "
                     "stage's checkpoint_final.pth (the first stage is the training of that trainer's own row, "
                     "shared); the last stage is evaluated; s/iteration of the last stage, "
                     "training wall time summed over the stages, peak GPU memory the largest of any stage")
    if p.get("preset"):
        lines.append(f"- preset {p['preset']} (set: {', '.join(p.get('preset_options') or []) or 'nothing'}; "
                     f"the other options were given on the command line)")
    if any(t.split(" + ")[0] == "SelfTraining" for t in p["trainers"]):
        lines.append("- SelfTraining: offline self-training. Plain nnU-Net (nnUNetTrainerBudget, the plain row's model) "
                     "predicts the fold's unlabeled cases (images only), then nnUNetTrainerBudget trains again from "
                     "scratch, same budget, on labeled + pseudo-labeled cases; training wall time = both trainings "
                     "+ pseudo-labelling")
    earlier = list(dict.fromkeys(r["earlier_command"] for r in results["runs"] if r.get("earlier_command")))
    for command in earlier:
        lines.append(f"- {EARLIER_MARK} rows measured by an earlier invocation into this folder (same protocol), "
                     f"kept while their metrics exist: `{command}`")
    for n, split in p["splits"].items():
        lines.append(f"- {n} labeled: {split['labeled_cases']} labeled case(s), {split['unlabeled_cases']} "
                     f"unlabeled case(s) in the split; split file {split['source']} (sha {split['digest']})")
    return lines


def markdown(results: dict) -> str:
    p = results["protocol"]
    names = p["class_names"]
    out = [f"# Benchmark: {p['dataset_name']}", "", *protocol_lines(results), "",
           "Metrics:", "", "- " + p["evaluation"]["protocols"]["mona"], "- " + p["evaluation"]["protocols"]["mm"], ""]
    for n in p["labeled_counts"]:
        runs = [r for r in results["runs"] if r["n_labeled"] == n]
        out += [f"## {n} labeled patient(s)", "", "MONA protocol (Dice [%], distances in voxels):", "",
                "| trainer | Dice | " + " | ".join(names) + " | HD95 [vox] | ASD [vox] | s/iteration | peak GPU memory "
                "| training wall time |",
                "|---" * (len(names) + 7) + "|"]
        for r in runs:
            if r["status"] != "ok":
                out.append(f"| {r['trainer']} | {r['status']}: {(r.get('error') or 'see the logs').splitlines()[0][:80]} |"
                           + " |" * (len(names) + 5))
                continue
            s, rec = r["summary"]["mona"], r.get("train") or {}
            out.append(f"| {_row(r)} | {_pct(s['mean']['dice'])} | "
                       + " | ".join(_pct(s["per_class"][c]["dice"]) for c in names)
                       + f" | {_num(s['mean']['hd95'])} | {_num(s['mean']['asd'])} | "
                         f"{_num(rec.get('seconds_per_iteration'), 3)} | {_memory(rec)} | "
                         f"{_seconds(rec.get('wall_seconds_this_segment'))} |")
        for row in results.get("published", {}).get(str(n), []):
            out.append(f"| *{row['name']}* | *{_pct(row['dice_mean'])}* | "
                       + " | ".join(f"*{_pct(row['dice_per_class'].get(c))}*" for c in names)
                       + f" | — | *{_num(row['asd_mean'])}* | — | — | — |")
        if results.get("published", {}).get(str(n)):
            out += ["", f"*Italic rows are published numbers ({SOURCE}), not measured here: other network, "
                        f"budget and test set (40 ACDC test volumes).*"]
        out += ["", "Spacing-aware (Dice [%], distances in mm; undefined values left out):", "",
                "| trainer | Dice | " + " | ".join(names) + " | HD95 [mm] | ASD [mm] |", "|---" * (len(names) + 4) + "|"]
        for r in runs:
            if r["status"] != "ok":
                continue
            s = r["summary"]["mm"]
            out.append(f"| {_row(r)} | {_pct(s['mean']['dice'])} | "
                       + " | ".join(_pct(s["per_class"][c]["dice"]) for c in names)
                       + f" | {_num(s['mean']['hd95'])} | {_num(s['mean']['asd'])} |")
        out.append("")
    return "\n".join(out)


def bar_heights_and_labels(results: dict, trainer: str, counts: List[int]) -> Tuple[List[float], List[str]]:
    """One bar per labeled count: its mean Dice in % (MONA protocol) and label; a row that was not run for a count
    (a folder that collected rows over several invocations) or did not finish gets no bar, only "not run" /
    "failed": a 0 bar would read as a measured Dice of 0."""
    heights, labels = [], []
    for n in counts:
        run = next((r for r in results["runs"] if r["n_labeled"] == n and r["trainer"] == trainer), None)
        ok = run is not None and run["status"] == "ok"
        dice = run["summary"]["mona"]["mean"]["dice"] if ok else None
        heights.append(0.0 if dice is None else 100 * dice)
        labels.append("not run" if run is None else "failed" if not ok else "n/a" if dice is None else
                      f"{100 * dice:.1f}")
    return heights, labels


def bar_chart(results: dict, path: str) -> None:
    """Mean Dice (MONA protocol) per labeled count, one bar per trainer; published MONA as a black tick."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = results["protocol"]
    counts, trainers = p["labeled_counts"], p["trainers"]
    width = 0.8 / max(1, len(trainers))
    # the legend sits right of the axes (inside it covered the lowest bars)
    fig, ax = plt.subplots(figsize=(3.6 + 1.4 * len(counts) * max(1, len(trainers)) / 2, 4))
    for i, t in enumerate(trainers):
        heights, labels = bar_heights_and_labels(results, t, counts)
        xs = [k + (i - (len(trainers) - 1) / 2) * width for k in range(len(counts))]
        bars = ax.bar(xs, heights, width, label=t.replace("nnUNetTrainer", "") or t)
        ax.bar_label(bars, labels=labels, fontsize=7)
    published = results.get("published", {})
    label_done = False
    for k, n in enumerate(counts):
        mona = [r for r in published.get(str(n), []) if r["name"].startswith("MONA")]
        if mona:
            ax.hlines(100 * mona[0]["dice_mean"], k - 0.45, k + 0.45, colors="k", linestyles="--",
                      label=None if label_done else "MONA (published, other protocol)")
            label_done = True
    ax.set_xticks(range(len(counts)), [f"{n} labeled" for n in counts])
    ax.set_ylabel("mean Dice [%] (MONA protocol)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{p['dataset_name']}: {p['epochs']} x {p['iterations_per_epoch']} iterations", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
