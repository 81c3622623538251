"""``scaling.json`` / ``scaling.md`` / ``scaling.png`` of ``nnUNetv2_mona_scaling``, read from its budget folders.

Every cell is (labeled count N, row, budget B): the mean Dice (MONA protocol, the benchmark's evaluation) over the
seeds measured, each seed's measured total iterations and training time. A cell whose measured total differs from
B is flagged (shown with ``!`` and listed under the table); only unflagged cells enter the margins (gain over plain
nnU-Net and over self-training, share of the gap from plain nnU-Net to the full-supervision ceiling closed).
"""
import json
import math
import os
from typing import Dict, List, Optional

from nnunet_mona.benchmark.scaling_plan import CEILING, PLAIN, SELF, measured_total_iterations, where_row_lives
from nnunet_mona.benchmark.self_training import SELF_TRAINING

FLAG = "!"


def seed_folder(output: str, seed) -> str:
    return os.path.join(output, f"seed_{'none' if seed is None else seed}")


def budget_folder(output: str, seed, budget: int) -> str:
    return os.path.join(seed_folder(output, seed), f"budget_{budget}")


def _runs(folder: str) -> Dict[tuple, dict]:
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        results = json.load(f)
    return {(r["n_labeled"], r["trainer"]): r for r in results.get("runs", [])}


def finished_single_training(folder: str, n: int, trainer: str) -> Optional[dict]:
    """A one-training row that the benchmark call still running has finished (its metrics and training record
    exist, results.json does not list it yet), in results.json's form; None otherwise."""
    if SELF_TRAINING in trainer or "+" in trainer:
        return None  # self-training and chains: their composite record is only written with results.json
    metrics = os.path.join(folder, f"labeled_{n}", "metrics", f"{trainer}.json")
    record = os.path.join(folder, f"labeled_{n}", "records", f"{trainer}_train.json")
    if not (os.path.isfile(metrics) and os.path.isfile(record)):
        return None
    with open(metrics) as f, open(record) as g:
        return {"n_labeled": n, "trainer": trainer, "status": "ok", "summary": json.load(f)["summary"],
                "train": json.load(g)}


def training_seconds(train_record: dict) -> Optional[float]:
    """Seconds spent training (epoch times from the checkpoints, so a resumed training counts whole) plus the
    pseudo-labelling of self-training; None when a part does not tell."""
    stages = train_record.get("stages") or [train_record]
    total = 0.0
    for part in stages:
        if part.get("stages") and part is not train_record:
            inner = training_seconds(part)
            if inner is None:
                return None
            total += inner
        elif "epochs_completed" in part:
            if part.get("mean_epoch_seconds") is None:
                return None
            total += part["mean_epoch_seconds"] * part["epochs_completed"]
        else:
            total += part.get("wall_seconds") or 0.0
    return total


def cell(output: str, seeds: List, row: str, budget: int, n: int, ceiling_labeled: int, iterations: int,
         runs_cache: Optional[Dict[str, Dict[tuple, dict]]] = None) -> dict:
    """The measurements of one (row, budget, N) over ``seeds``; ``status`` 'ok', 'failed' or 'not run'.
    ``runs_cache`` ({folder: its results.json rows}) lets one report read each results.json once."""
    runs_cache = {} if runs_cache is None else runs_cache
    folder_budget, labeled, trainer = where_row_lives(row, budget, n, ceiling_labeled, iterations)
    per_seed = []
    for seed in seeds:
        folder = budget_folder(output, seed, folder_budget)
        if folder not in runs_cache:
            runs_cache[folder] = _runs(folder)
        run = runs_cache[folder].get((labeled, trainer)) or finished_single_training(folder, labeled, trainer)
        if run is None:
            continue
        entry = {"seed": seed, "status": run.get("status"), "folder_budget": folder_budget}
        if run.get("status") == "ok":
            entry.update(dice=run["summary"]["mona"]["mean"]["dice"],
                         total_iterations=measured_total_iterations(run.get("train", {})),
                         training_seconds=training_seconds(run.get("train", {})))
        per_seed.append(entry)
    ok = [e for e in per_seed if e["status"] == "ok"]
    result = {"row": row, "budget": budget, "n_labeled": n, "seeds": per_seed,
              "status": "ok" if ok else ("failed" if per_seed else "not run")}
    if ok:
        result["dice"] = sum(e["dice"] for e in ok) / len(ok)
        result["flagged"] = any(e["total_iterations"] != budget for e in ok)
        times = [e["training_seconds"] for e in ok]
        result["training_seconds"] = None if None in times else sum(times) / len(times)
    return result


def collect(output: str, stamp: dict) -> dict:
    """Every cell of the rows, budgets, labeled counts and seeds that the folder's invocations asked for."""
    seeds, rows, budgets = stamp["seeds"], stamp["rows"], sorted(stamp["budgets"])
    ceiling, iterations = stamp["ceiling_labeled"], stamp["iterations_per_epoch"]
    tables, runs_cache = {}, {}
    for n in stamp["labeled"]:
        tables[str(n)] = {row: {str(b): cell(output, seeds, row, b, n, ceiling, iterations, runs_cache)
                                for b in budgets}
                          for row in rows}
    return {"protocol": stamp, "tables": tables, "margins": {n: margins(t, budgets) for n, t in tables.items()},
            "trends": {n: {row: log_linear_trend(cells) for row, cells in t.items()} for n, t in tables.items()}}


def _usable(c: Optional[dict]) -> Optional[float]:
    return c["dice"] if c and c["status"] == "ok" and not c["flagged"] else None


def _per_seed(c: Optional[dict], budget: int) -> Dict:
    """{seed: Dice} of a cell's seeds that trained and trained the budget's total (flagged seeds left out)."""
    if not c:
        return {}
    return {e["seed"]: e["dice"] for e in c["seeds"] if e["status"] == "ok" and e["total_iterations"] == budget}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def margins(table: Dict[str, Dict[str, dict]], budgets: List[int]) -> Dict[str, Dict[str, dict]]:
    """Per semi-supervised row and budget: gain over plain / self-training (Dice points) and the share of the gap
    from plain nnU-Net to the ceiling that it closes; None where a needed cell is missing or flagged. Each gain is
    paired: the mean difference over the seeds both rows have (``seeds``: those of the gain over plain), so a row
    with a second seed is never compared with another row's first seed alone; the ceiling, a reference, is its mean
    over its seeds."""
    out = {}
    for row, cells in table.items():
        if row in (PLAIN, CEILING):
            continue
        out[row] = {}
        for b in budgets:
            value = _per_seed(cells.get(str(b)), b)
            plain = _per_seed(table.get(PLAIN, {}).get(str(b)), b)
            self_training = _per_seed(table.get(SELF, {}).get(str(b)), b)
            ceiling = _per_seed(table.get(CEILING, {}).get(str(b)), b)
            with_plain = sorted(set(value) & set(plain))
            with_self = sorted(set(value) & set(self_training))
            over_plain = _mean(value[s] - plain[s] for s in with_plain) if with_plain else None
            gap = None
            if over_plain is not None and ceiling:
                room = _mean(ceiling.values()) - _mean(plain[s] for s in with_plain)
                gap = over_plain / room if room > 0 else None
            out[row][str(b)] = {
                "over_plain": None if over_plain is None else 100 * over_plain,
                "over_self_training": (None if not with_self or row == SELF
                                       else 100 * _mean(value[s] - self_training[s] for s in with_self)),
                "gap_closed": gap,
                "seeds": with_plain,
            }
    return out


def row_label(row: str, ceiling_labeled: int) -> str:
    return {PLAIN: "plain nnU-Net (nnUNetTrainerBudget)", SELF: "offline self-training (2 trainings x B/2)",
            CEILING: f"plain nnU-Net, {ceiling_labeled} labeled (ceiling)"}.get(row, row)


def _seconds(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    value = int(round(value))
    return f"{value // 3600}h{value % 3600 // 60:02d}m" if value >= 3600 else f"{value // 60}m{value % 60:02d}s"


def _dice_cell(c: dict) -> str:
    if c["status"] != "ok":
        return c["status"]
    seeds = sum(1 for e in c["seeds"] if e["status"] == "ok")
    text = f"{100 * c['dice']:.1f}" + (f" ({seeds} seeds)" if seeds > 1 else "")
    return text + (f" {FLAG}" if c["flagged"] else "")


def _pts(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+.1f}"


def markdown(report: dict) -> str:
    p = report["protocol"]
    budgets = sorted(p["budgets"])
    head = "| row | " + " | ".join(f"B = {b}" for b in budgets) + " |"
    rule = "|---|" + "---:|" * len(budgets)
    lines = ["# Budget scaling: mean Dice against total training iterations per row", "",
             f"- dataset {p['dataset_name']}, {p['iterations_per_epoch']} iterations per epoch, seeds {p['seeds']}, "
             f"evaluation: {p['evaluation']}; benchmark options: `{' '.join(p['benchmark_options'])}`",
             f"- budget B = total training iterations of a row (self-training: its two trainings together; a "
             f"supervised warm-up inside a training counts); a cell marked {FLAG} trained another total (see below) "
             f"and is left out of the margins",
             "- commands: " + "; ".join(f"`{c}`" for c in p.get("commands", [])), ""]
    flagged = []
    for n, all_rows in report["tables"].items():
        # rows with nothing at this labeled count are left out; so is a count where only the ceiling (shared by
        # every count) was measured
        table = {row: cells for row, cells in all_rows.items()
                 if any(c["status"] != "not run" for c in cells.values())}
        if not set(table) - {CEILING}:
            continue
        lines += [f"## {n} labeled patient(s): mean Dice (%)", "", head, rule]
        for row, cells in table.items():
            lines.append(f"| {row_label(row, p['ceiling_labeled'])} | " +
                         " | ".join(_dice_cell(cells[str(b)]) for b in budgets) + " |")
            for b in budgets:
                c = cells[str(b)]
                for e in c["seeds"]:
                    if e["status"] == "ok" and e["total_iterations"] != b:
                        flagged.append(f"N={n} {row} at B = {b}, seed {e['seed']}: trained "
                                       f"{e['total_iterations']} iterations")
        lines += ["", f"### {n} labeled: margins (Dice points; gap = share of plain -> ceiling closed; each over "
                      f"the seeds both rows have, named where the row has more)", "", head, rule]
        for row, per_budget in report["margins"][n].items():
            if row not in table or all(m["over_plain"] is None for m in per_budget.values()):
                continue
            texts = []
            for b in budgets:
                m = per_budget[str(b)]
                gap = "n/a" if m["gap_closed"] is None else f"{100 * m['gap_closed']:.0f} %"
                measured = len(_per_seed(report["tables"][n][row][str(b)], b))
                paired = f" (seed {', '.join(map(str, m['seeds']))})" if 0 < len(m["seeds"]) < measured else ""
                texts.append(f"{_pts(m['over_plain'])} / {_pts(m['over_self_training'])} / {gap}{paired}")
            lines.append(f"| {row_label(row, p['ceiling_labeled'])}: over plain / over self-training / gap | " +
                         " | ".join(texts) + " |")
        lines += ["", f"### {n} labeled: training time per row (mean over seeds)", "", head, rule]
        for row, cells in table.items():
            lines.append(f"| {row_label(row, p['ceiling_labeled'])} | " +
                         " | ".join(_seconds(cells[str(b)].get("training_seconds")) for b in budgets) + " |")
        lines += _trend_lines(n, {row: t for row, t in report["trends"][n].items() if t and row in table},
                              p["ceiling_labeled"])
        lines.append("")
    if flagged:
        lines += [f"## {FLAG} Rows trained with another total than their budget", ""] + [f"- {f}" for f in flagged]
    return "\n".join(lines) + "\n"


def figure(report: dict, path: str) -> None:
    """Dice against total iterations (log axis), one line per row and labeled count, the ceiling dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    p = report["protocol"]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    markers, colours = "os^Dv", plt.get_cmap("tab20").colors
    rows = list(dict.fromkeys(row for table in report["tables"].values() for row in table))
    ceiling_drawn = False  # the ceiling is one model for every labeled count: one line
    for i, (n, table) in enumerate(report["tables"].items()):
        for row, cells in table.items():
            points = [(int(b), 100 * c["dice"]) for b, c in cells.items() if c["status"] == "ok"]
            if not points or (row == CEILING and ceiling_drawn):
                continue
            ceiling_drawn = ceiling_drawn or row == CEILING
            points.sort()
            style = "--" if row == CEILING else "-"
            label = row_label(row, p["ceiling_labeled"]) + ("" if row == CEILING else f", {n} labeled")
            # colour: the row; marker: the labeled count
            ax.plot(*zip(*points), style, marker=markers[i % len(markers)], color=colours[rows.index(row) % 20],
                    label=label)
            for b, c in cells.items():
                if c["status"] == "ok" and c["flagged"]:
                    ax.annotate(FLAG, (int(b), 100 * c["dice"]), color="red")
    ax.set_xscale("log")
    ax.set_xlabel("total training iterations per row")
    ax.set_ylabel("mean Dice (%)")
    counts = sorted(int(n) for n in report["tables"])
    ax.set_title(f"{p['dataset_name']}: {', '.join(map(str, counts))} labeled patient(s), ceiling "
                 f"{p['ceiling_labeled']} labeled")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


NNUNET_DEFAULT_ITERATIONS = 1000 * 250  # nnU-Net's 1000 epochs x 250 iterations


def log_linear_trend(cells: Dict[str, dict]) -> Optional[dict]:
    """Least-squares line of Dice (points) against log2(budget) over the unflagged cells of one row (None below 2
    budgets): ``per_doubling`` (its slope), the ``budgets`` fitted, and ``at_nnunet_default``, the line's value at
    nnU-Net's default budget. A trend of the measured range only: every row must bend below its ceiling."""
    points = [(math.log2(int(b)), 100 * c["dice"]) for b, c in cells.items() if _usable(c) is not None]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return {"per_doubling": slope, "budgets": sorted(int(b) for b, c in cells.items() if _usable(c) is not None),
            "at_nnunet_default": my + slope * (math.log2(NNUNET_DEFAULT_ITERATIONS) - mx)}


def _trend_lines(n: str, trends: Dict[str, dict], ceiling_labeled: int) -> List[str]:
    if not trends:
        return []
    lines = ["", f"### {n} labeled: log-linear trend (Dice points per doubling of B, fitted on the budgets "
                 f"measured; its value at nnU-Net's {NNUNET_DEFAULT_ITERATIONS} iterations ignores that every row "
                 f"must bend below the ceiling: a trend, not a forecast)", "",
             f"| row | budgets fitted | per doubling | line at B = {NNUNET_DEFAULT_ITERATIONS} |",
             "|---|---|---:|---:|"]
    for row, t in trends.items():
        value = t["at_nnunet_default"]
        lines.append(f"| {row_label(row, ceiling_labeled)} | {', '.join(map(str, t['budgets']))} | "
                     f"{t['per_doubling']:+.2f} | {f'{value:.1f}' if value <= 100 else 'above 100'} |")
    return lines
