"""What ``nnUNetv2_mona_scaling`` trains: the rows, and for each budget the benchmark folders they live in.

A *budget* B is the total number of training iterations a row may spend, whatever its recipe:

* ``plain``: plain nnU-Net (``nnUNetTrainerBudget``), B / I epochs of I iterations;
* ``self_training``: offline self-training, whose two trainings share the budget: plain nnU-Net for B / 2, its
  pseudo-labels, plain nnU-Net again for B / 2. It is the ``SelfTraining`` row of the benchmark folder of budget
  B / 2, so its first training is the plain row of that budget when B / 2 is on the curve too (trained once);
* any trainer class (``nnUNetTrainerMeanTeacher_warmStart`` ...): one training of B / I epochs (a supervised
  warm-up inside it counts towards B);
* ``ceiling``: plain nnU-Net with every training patient labeled (``--ceiling_labeled``), B / I epochs.

The budget folder ``OUTPUT/seed_<S>/budget_<b>`` is an ordinary ``nnUNetv2_mona_benchmark`` output folder with
``--epochs b / I``; a row's *measured* total (epochs completed x iterations, summed over its trainings) is what the
report compares, so a row that trained another total is flagged, never silently compared.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from nnunet_mona.benchmark.processes import BenchmarkError
from nnunet_mona.benchmark.self_training import BASE_TRAINER, SELF_TRAINING

PLAIN, SELF, CEILING = "plain", "self_training", "ceiling"
KEYWORDS = (PLAIN, SELF, CEILING)
# the defaults' recipes under names that stay when a default changes (the default Mean Teacher is _noAlignment)
DEFAULT_ROWS = (PLAIN, SELF, "nnUNetTrainerMeanTeacher_randomStart", "nnUNetTrainerMeanTeacher_noAlignment",
                "nnUNetTrainerMONA_warmStart", CEILING)


@dataclass(frozen=True)
class Invocation:
    """One ``nnUNetv2_mona_benchmark`` call: ``trainers`` x ``labeled`` in the folder of ``folder_budget``."""
    folder_budget: int
    labeled: Tuple[int, ...]
    trainers: Tuple[str, ...]


def check_budgets(budgets: Sequence[int], iterations: int) -> List[int]:
    """The budgets, largest first; a clear error for an empty list, duplicates, a budget below one epoch or one
    that is not a whole number of epochs."""
    if not budgets:
        raise BenchmarkError("--budgets is empty: give one or more total-iteration budgets, e.g. 1000 2000 4000")
    duplicates = sorted({b for b in budgets if list(budgets).count(b) > 1})
    if duplicates:
        raise BenchmarkError(f"--budgets lists {duplicates} more than once")
    for b in budgets:
        if b < iterations:
            raise BenchmarkError(f"budget {b} is below one epoch ({iterations} iterations per epoch)")
        if b % iterations:
            raise BenchmarkError(f"budget {b} is not a whole number of epochs of {iterations} iterations; use a "
                                 f"multiple of {iterations} (or change --iterations)")
    return sorted(budgets, reverse=True)


def check_rows(rows: Sequence[str]) -> List[str]:
    if not rows:
        raise BenchmarkError(f"--rows is empty; e.g. {' '.join(DEFAULT_ROWS)}")
    duplicates = sorted({r for r in rows if list(rows).count(r) > 1})
    if duplicates:
        raise BenchmarkError(f"--rows lists {duplicates} more than once")
    if SELF_TRAINING in rows or BASE_TRAINER in rows:
        raise BenchmarkError(f"name the rows {SELF} / {PLAIN} instead of {SELF_TRAINING} / {BASE_TRAINER} (the "
                             f"scaling command gives self-training half the budget per training)")
    return list(rows)


def self_training_folder_budget(budget: int, iterations: int) -> int:
    """The budget folder whose SelfTraining row spends ``budget`` in all: whole epochs of half of it (a budget of
    an odd number of epochs leaves self-training one epoch short: its measured total shows it)."""
    return max(iterations, (budget // 2) // iterations * iterations)


def trainer_rows(rows: Sequence[str]) -> List[str]:
    """The benchmark trainer of every row trained on the labeled counts (``plain`` -> nnUNetTrainerBudget)."""
    return [BASE_TRAINER if r == PLAIN else r for r in rows if r not in (SELF, CEILING)]


def invocations(budgets: Sequence[int], rows: Sequence[str], labeled: Sequence[int], ceiling_labeled: int,
                iterations: int) -> List[Invocation]:
    """The benchmark calls, largest budget first (a stopped run has its most expensive rows done): per budget, the
    trainer rows on the labeled counts, then self-training (half-budget folder), then the ceiling."""
    calls = []
    for budget in budgets:
        trainers = trainer_rows(rows)
        if trainers:
            calls.append(Invocation(budget, tuple(labeled), tuple(trainers)))
        if SELF in rows:
            calls.append(Invocation(self_training_folder_budget(budget, iterations), tuple(labeled),
                                    (SELF_TRAINING,)))
        if CEILING in rows:
            calls.append(Invocation(budget, (ceiling_labeled,), (BASE_TRAINER,)))
    return calls


def where_row_lives(row: str, budget: int, n: int, ceiling_labeled: int, iterations: int) -> Tuple[int, int, str]:
    """(folder budget, labeled count, benchmark row name) of ``row`` at ``budget`` for ``n`` labeled patients."""
    if row == SELF:
        return self_training_folder_budget(budget, iterations), n, SELF_TRAINING
    if row == CEILING:
        return budget, ceiling_labeled, BASE_TRAINER
    return budget, n, BASE_TRAINER if row == PLAIN else row


def measured_total_iterations(train_record: dict):
    """Training iterations a benchmark row really ran: epochs completed x iterations per epoch, summed over its
    trainings (a self-training row's two, a chain's stages). None when the record does not tell."""
    stages = train_record.get("stages")
    parts = stages if stages else [train_record]
    total = 0
    for part in parts:
        if "stages" in part and part is not train_record:
            inner = measured_total_iterations(part)
            if inner is None:
                return None
            total += inner
            continue
        if "epochs_completed" not in part and "iterations_per_epoch" not in part:
            continue  # the pseudo-labelling step of self-training trains nothing
        epochs, per_epoch = part.get("epochs_completed"), part.get("iterations_per_epoch")
        if epochs is None or per_epoch is None:
            return None
        total += int(epochs) * int(per_epoch)
    return total
