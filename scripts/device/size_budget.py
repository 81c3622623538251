#!/usr/bin/env python
"""Cost table and budget sizing for the device script (scripts/device/acdc_gpu.sh).

    python scripts/device/size_budget.py --work W --remaining_s 330 --cores 16 --out OUT

Reads what acdc_gpu.sh measured in ``W``: ``iter_<trainer>.json`` (the ``--json`` line of
scripts/benchmark_iteration.py: seconds per ``train_step`` and peak memory, each trainer alone on the device),
``iter_<trainer>.wall`` (that process's wall seconds: start-up + initialisation + the timed steps) and
``da.json`` (scripts/device/da_cost.py: one core's seconds of data augmentation per iteration). Writes
``cost.md`` / ``cost.json`` (ratios to the first trainer, plain nnU-Net) and ``sizing.json`` into ``--out`` and
prints shell assignments (EPOCHS_SIZED, ITERATIONS_SIZED, LABELED, PARALLEL, N_PROC_DA, NP, PREDICTED_S) for ``eval``.

The model (an estimate; every input and assumption is written to sizing.json):

* all trainings (3 trainers x each labeled count N) run at once and share the GPU; one iteration of all of
  them takes ``gpu = max(max_i g_i, share * sum_i g_i)`` with ``g_i`` the measured solo step time and
  ``share`` (default 0.75) the fraction of the summed solo times that concurrent small 2d trainings need
  (a solo 2d step leaves the GPU partly idle, so sharing overlaps them). Reference: the device notes report
  ~39 s per 250-iteration epoch (0.156 s/iteration) for plain nnU-Net 2d ACDC with 4 trainings sharing;
* each training's augmentation gives at most ``workers / da_core_s`` iterations per second; the cores minus one
  per training process are split over the trainings (``nnUNet_n_proc_DA = k``; semi-supervised trainers add
  ``round(k/2)`` unlabeled workers, their ``unlabeled_worker_share``); an iteration takes
  ``w = max(gpu, max_i da_core_s_i / workers_i)``;
* an epoch adds ``val_iterations`` forward passes (0.4 w each) and ``epoch_overhead_s`` (plots, checkpoint);
* fixed costs: start-up (1.5 x the slowest measured start-up: the processes start together) and
  ``post_s`` (nnU-Net's final validation of the labeled cases, prediction of the evaluation volumes,
  evaluation, report); the rest, times ``safety`` (0.85), is the training time.
Iterations per epoch: the time for about ``target_epochs`` epochs, clamped to [10, 250]. Extra labeled counts
(``--extra_labeled``) are added only while every training still gets ``--min_iterations``.
"""
import argparse
import json
import os
import sys
from typing import Dict, List

SEMI_WORKER_SHARE = 0.5  # SemiSupervisedTrainerBase.unlabeled_worker_share
# the benchmark's plain baseline is nnU-Net's trainer with the nnUNet_mona_* budget: same step, same loaders
MEASURED_AS = {"nnUNetTrainerBudget": "nnUNetTrainer"}
# used only for a trainer whose measurement failed: plain nnU-Net 2d ACDC on an H200 (guess: half of the
# 0.156 s/iteration the device notes report for 4 trainings sharing, batch 56 of 256 x 224), and ratios to it (guesses)
FALLBACK_PLAIN = {"mean_s": 0.08, "peak_mb": 10000.0, "process_wall_s": 60.0}
FALLBACK_RATIO = {"nnUNetTrainer": 1.0, "nnUNetTrainerMeanTeacher": 1.6, "nnUNetTrainerMONA": 2.5}
DA_FALLBACK_CORE_S = 0.6  # ~ 4 workers x 0.156 s (the device notes' shared run, if it was augmentation-bound)


def _estimate(trainer: str, reference: dict) -> dict:
    """Stand-in row for a trainer whose measurement failed (so the others still train): plain nnU-Net's measured
    row, else FALLBACK_PLAIN, scaled by FALLBACK_RATIO; flagged ``estimated``."""
    ratio = FALLBACK_RATIO.get(trainer, 2.0)
    base = reference or FALLBACK_PLAIN
    semi = trainer != "nnUNetTrainer"
    return {"trainer": trainer, "batch": "?+1" if semi else "?+0", "mean_s": base["mean_s"] * ratio,
            "std_s": float("nan"), "peak_mb": base["peak_mb"] * ratio, "process_wall_s": base["process_wall_s"],
            "estimated": True}


def load_measurements(work: str, trainers: List[str]) -> List[dict]:
    rows = []
    for t in trainers:
        try:
            with open(os.path.join(work, f"iter_{t}.json")) as f:
                row = json.loads(f.read().strip().splitlines()[-1])[0]
            with open(os.path.join(work, f"iter_{t}.wall")) as f:
                row["process_wall_s"] = float(f.read().strip())
        except (OSError, ValueError, IndexError, KeyError):
            row = _estimate(t, rows[0] if rows and not rows[0].get("estimated") else None)
            print(f"WARNING: no measurement of {t}: using an estimate {row}", file=sys.stderr)
        rows.append(row)
    da = {}
    da_file = os.path.join(work, "da.json")
    if os.path.isfile(da_file):
        with open(da_file) as f:
            da = {r["trainer"]: r for r in json.loads(f.read().strip().splitlines()[-1])}
    for row in rows:
        semi = row["batch"].split("+")[-1] not in ("0", "None")
        source = next((r for r in da.values() if (r["batch"].split("+")[-1] != "0") == semi), None)
        row["semi_supervised"] = semi
        row["da_core_s"] = da[row["trainer"]]["da_core_s"] if row["trainer"] in da else \
            (source["da_core_s"] if source else DA_FALLBACK_CORE_S)
    return rows


def cost_table(rows: List[dict], device: str, gpu: str, timed: str) -> str:
    ref = rows[0]
    memory = "peak GPU MiB" if device == "cuda" else "+RSS MiB (CPU proxy)"
    lines = [f"Cost per training iteration on {gpu} ({device}), {timed}; each trainer alone, same plans "
             f"(scripts/benchmark_iteration.py). DA: one core's seconds of data augmentation per iteration "
             f"(scripts/device/da_cost.py).", "",
             f"| trainer | batch (labeled+unlabeled) | s / iteration | {memory} | x time | x memory | DA core-s / it |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        da = f"{r['da_core_s']:.3f}" if r.get("da_core_s") is not None else "n/a"
        name = r["trainer"] + (" (estimated: measurement failed)" if r.get("estimated") else "")
        lines.append(f"| {name} | {r['batch']} | {r['mean_s']:.4f} | {r['peak_mb']:.0f} | "
                     f"{r['mean_s'] / ref['mean_s']:.2f} | {r['peak_mb'] / max(ref['peak_mb'], 1e-9):.2f} | {da} |")
    return "\n".join(lines) + "\n"


def plan(rows: Dict[str, dict], trainings: List[str], a) -> dict:
    """Budget for ``trainings`` (benchmark trainer names, one entry per training) running at once."""
    cost = [rows[MEASURED_AS.get(t, t)] for t in trainings]
    p = len(trainings)
    weights = [1 + (SEMI_WORKER_SHARE if c["semi_supervised"] else 0) for c in cost]
    k = max(1, int((a.cores - p) // sum(weights)))
    workers = [k + (max(1, round(SEMI_WORKER_SHARE * k)) if c["semi_supervised"] else 0) for c in cost]
    g = [c["mean_s"] for c in cost]
    gpu = max(max(g), a.share * sum(g))
    da = max(c["da_core_s"] / w for c, w in zip(cost, workers))
    w = max(gpu, da)
    startup = 1.5 * max(max(0.0, c["process_wall_s"] - (a.bench_iterations + a.bench_warmup) * c["mean_s"])
                        for c in cost)
    train_s = (a.remaining_s - startup - a.post_s) * a.safety
    per_epoch_extra = 0.4 * a.val_iterations * w + a.epoch_overhead_s
    iterations = int(min(250, max(10, (train_s / a.target_epochs - per_epoch_extra) / w)))
    # at least 2: the default Mean Teacher / MONA train their first half supervised and need a semi-supervised epoch
    epochs = max(2, int(train_s // (iterations * w + per_epoch_extra)))
    predicted = startup + epochs * (iterations * w + per_epoch_extra) + a.post_s
    return {"trainings": p, "n_proc_DA": k, "workers_per_training": workers, "gpu_s_per_iteration": gpu,
            "da_limit_s_per_iteration": da, "s_per_iteration": w, "limited_by": "GPU" if gpu >= da else "augmentation",
            "startup_s": round(startup, 1), "training_s_available": round(train_s, 1), "epochs": epochs,
            "iterations": iterations, "total_iterations": epochs * iterations, "predicted_wall_s": round(predicted, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="folder with iter_<trainer>.json/.wall and da.json")
    parser.add_argument("--out", required=True, help="folder for cost.md, cost.json, sizing.json")
    parser.add_argument("--measured", nargs="+", default=["nnUNetTrainer", "nnUNetTrainerMeanTeacher",
                                                           "nnUNetTrainerMONA"], help="first = reference")
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher",
                                                           "nnUNetTrainerMONA"], help="the benchmark's trainers")
    parser.add_argument("--labeled", type=int, nargs="+", default=[3])
    parser.add_argument("--extra_labeled", type=int, nargs="*", default=[1, 7])
    parser.add_argument("--min_iterations", type=int, default=1000)
    parser.add_argument("--remaining_s", type=float, required=True, help="seconds left for the benchmark")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--share", type=float, default=0.75)
    parser.add_argument("--safety", type=float, default=0.85)
    parser.add_argument("--post_s", type=float, default=75.0)
    parser.add_argument("--val_iterations", type=int, default=2)
    parser.add_argument("--epoch_overhead_s", type=float, default=2.0)
    parser.add_argument("--target_epochs", type=int, default=6)
    parser.add_argument("--bench_iterations", type=int, default=12)
    parser.add_argument("--bench_warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--gpu", default="unknown GPU")
    args = parser.parse_args(argv)

    rows = load_measurements(args.work, args.measured)
    by_name = {r["trainer"]: r for r in rows}
    os.makedirs(args.out, exist_ok=True)
    timed = f"{args.bench_iterations} timed iterations after {args.bench_warmup} warm-up"
    with open(os.path.join(args.out, "cost.md"), "w") as f:
        f.write(cost_table(rows, args.device, args.gpu, timed))
    with open(os.path.join(args.out, "cost.json"), "w") as f:
        json.dump({"device": args.device, "gpu": args.gpu, "timing": timed, "rows": rows}, f, indent=2)
    labeled = list(args.labeled)
    chosen = plan(by_name, args.trainers * len(labeled), args)
    for extra in args.extra_labeled:
        trial = plan(by_name, args.trainers * (len(labeled) + 1), args)
        if trial["total_iterations"] < args.min_iterations:
            break
        labeled, chosen = labeled + [extra], trial
    chosen.update(labeled=labeled, np=max(1, args.cores // (2 * chosen["trainings"])),
                  fits=chosen["predicted_wall_s"] <= args.remaining_s)
    if not chosen["fits"]:
        print(f"WARNING: even {chosen['epochs']} x {chosen['iterations']} iterations are predicted to take "
              f"{chosen['predicted_wall_s']:.0f} s of the {args.remaining_s:.0f} s left", file=sys.stderr)
    with open(os.path.join(args.out, "sizing.json"), "w") as f:
        json.dump({"chosen": chosen, "inputs": vars(args), "model": __doc__.split("The model")[1]}, f, indent=2)
    print(cost_table(rows, args.device, args.gpu, timed), file=sys.stderr)
    print(f"sizing: {json.dumps(chosen)}", file=sys.stderr)
    print(f"EPOCHS_SIZED={chosen['epochs']} ITERATIONS_SIZED={chosen['iterations']} LABELED='{' '.join(map(str, labeled))}' "
          f"PARALLEL={chosen['trainings']} N_PROC_DA={chosen['n_proc_DA']} NP={chosen['np']} "
          f"PREDICTED_S={int(chosen['predicted_wall_s'])}")


if __name__ == "__main__":
    main()
