"""``nnUNetv2_mona_scaling --dry_run``: what a scaling command would train, and about how long it would take.

A curve of several budgets is many hours of training; before starting (or resuming) one, a user wants to know which
cells are done, which trainings an earlier run left unfinished, and the time the rest needs. Nothing is trained,
written or checked beyond the folder's files: every cell of the benchmark calls is looked up in its budget folder
(a cell is done when its metrics file exists, as the benchmark itself decides), and the time left is the iterations
still to train times the seconds per iteration that this folder's finished trainings of the same trainer measured
(their median; plain nnU-Net's rate for the ceiling and for self-training, which trains plain nnU-Net twice). A
variant never trained in the folder (``nnUNetTrainerMeanTeacher_warmStart25``) is estimated from the other variants of
its trainer measured there (every ``nnUNetTrainerMeanTeacher*``), and its line says so.
"""
import glob
import json
import os
import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_mona.benchmark.layout import Layout, RunPaths
from nnunet_mona.benchmark.scaling_plan import Invocation
from nnunet_mona.benchmark.scaling_report import budget_folder
from nnunet_mona.benchmark.self_training import BASE_TRAINER, SELF_TRAINING


@dataclass(frozen=True)
class PlannedCell:
    """One (benchmark row, labeled count) of one budget folder and what is left of it."""
    folder_budget: int
    n_labeled: int
    row: str
    status: str  # 'done' | 'interrupted' | 'to train'
    iterations_left: int  # an upper bound for an interrupted training (its progress is in its checkpoint)
    rate_trainer: str  # whose measured seconds per iteration estimate this cell


def measured_rates(output: str) -> Dict[str, float]:
    """{trainer: median seconds per training iteration} over every training record below ``output``."""
    rates: Dict[str, List[float]] = {}
    for path in glob.glob(os.path.join(output, "seed_*", "budget_*", "labeled_*", "**", "records", "*_train.json"),
                          recursive=True):
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue  # a record being written right now
        trainer, rate = record.get("trainer_name") or record.get("trainer"), record.get("seconds_per_iteration")
        if trainer and rate:
            rates.setdefault(trainer, []).append(float(rate))
    return {t: statistics.median(v) for t, v in rates.items()}


def variant_family_rate(rates: Dict[str, float], trainer: str) -> Optional[Tuple[float, str]]:
    """(median rate, family) of the measured variants of ``trainer``'s base name (the name before its first '_'),
    for a variant that has no measured rate of its own; None when none of them was measured either."""
    family = trainer.split("_")[0]
    others = [r for t, r in rates.items() if t != trainer and t.split("_")[0] == family]
    return (statistics.median(others), family) if others else None


def _unfinished_training(paths: RunPaths, stage: str) -> bool:
    """A training of ``stage`` that left checkpoint_latest.pth but no checkpoint_final.pth."""
    return any(os.path.isfile(os.path.join(folder, "checkpoint_latest.pth")) and
               not os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))
               for folder in glob.glob(paths.fold_folder(stage)))


def plan_cells(output: str, seed, calls: Sequence[Invocation]) -> List[PlannedCell]:
    """Every cell of ``calls`` with its status and the training iterations it still needs."""
    cells = []
    for call in calls:
        # wildcards for what only enters nnU-Net's results folder names (the benchmark may train a plans copy)
        layout = Layout(budget_folder(output, seed, call.folder_budget), dataset_name="*", configuration="*",
                        plans="*", fold="*")
        for n in call.labeled:
            plain = layout.run_paths(n, BASE_TRAINER)
            for row in call.trainers:
                paths = layout.run_paths(n, row)
                trainings = 2 if row == SELF_TRAINING else 1
                if os.path.isfile(paths.metrics):
                    status, left = "done", 0
                elif _unfinished_training(paths, paths.final) or (
                        row == SELF_TRAINING and _unfinished_training(plain, BASE_TRAINER)):
                    status, left = "interrupted", trainings * call.folder_budget
                else:
                    status, left = "to train", trainings * call.folder_budget
                if row == SELF_TRAINING and status != "done" and glob.glob(plain.final_checkpoint(BASE_TRAINER)):
                    left -= call.folder_budget  # its first training is the folder's finished plain row
                rate_trainer = BASE_TRAINER if row == SELF_TRAINING else paths.final
                cells.append(PlannedCell(call.folder_budget, n, row, status, left, rate_trainer))
    return cells


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def preview_lines(output: str, cells: Sequence[PlannedCell], rates: Dict[str, float]) -> List[str]:
    """The dry run's report: one line per cell, then the totals."""
    lines = [f"dry run of {output}: nothing is trained; cells in the order they would run"]
    known_seconds, unknown, borrowed = 0.0, [], 0
    for c in cells:
        what = f"budget folder {c.folder_budget}, N = {c.n_labeled}: {c.row}"
        if c.status == "done":
            lines.append(f"  [done]        {what}")
            continue
        rate: Optional[float] = rates.get(c.rate_trainer)
        source = ""
        family_rate = variant_family_rate(rates, c.rate_trainer) if rate is None else None
        if family_rate is not None:
            (rate, family), borrowed = family_rate, borrowed + 1
            source = f" (measured for other {family} variants)"
        if rate is None:
            unknown.append(c.row)
            estimate = "no training of it or of another variant of its trainer measured in this folder yet"
        else:
            known_seconds += rate * c.iterations_left
            estimate = f"about {_hours(rate * c.iterations_left)} at {rate:.2f} s/iteration{source}"
        bound = "at most " if c.status == "interrupted" else ""
        note = " (continues from checkpoint_latest.pth)" if c.status == "interrupted" else ""
        lines.append(f"  [{c.status}] {' ' * (11 - len(c.status))}{what}: {bound}{c.iterations_left} iterations, "
                     f"{estimate}{note}")
    left = [c for c in cells if c.status != "done"]
    total = sum(c.iterations_left for c in left)
    summary = f"{len(left)} of {len(cells)} cells to train, {total} training iterations"
    if left:
        summary += f", about {_hours(known_seconds)} at the rates measured in this folder"
        if borrowed:
            summary += f" ({borrowed} cell(s) at the rate of other variants of their trainer)"
        if unknown:
            summary += f" plus {len(unknown)} cell(s) of unknown rate ({', '.join(dict.fromkeys(unknown))})"
    lines.append(summary + " (training only; prediction and scoring add a little per cell)")
    return lines
