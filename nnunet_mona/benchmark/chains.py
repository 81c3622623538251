"""Trainer specs of ``nnUNetv2_mona_benchmark --trainers``: a trainer name, or a pretraining chain ``A+B+C``.

A chain trains its stages in order with the stock nnU-Net path, each stage starting from the previous stage's
``checkpoint_final.pth`` (nnU-Net's ``-pretrained_weights``); the last stage's model is predicted and evaluated.
Only name checks live here (no imports of nnU-Net); the trainer lookup is
:func:`nnunet_mona.benchmark.preparation.check_trainers`.
"""
from typing import List, Sequence

from nnunet_mona.benchmark.processes import BenchmarkError
from nnunet_mona.benchmark.self_training import BASE_TRAINER, SELF_TRAINING

SEPARATOR = "+"


def stages(spec: str) -> List[str]:
    """Trainer names of a spec, in training order (one name for a single trainer)."""
    return spec.split(SEPARATOR)


def is_chain(spec: str) -> bool:
    return len(stages(spec)) > 1


def stage_trainer(stage: str) -> str:
    """The nnU-Net trainer that trains a stage (``SelfTraining``'s last training is plain nnU-Net's)."""
    return BASE_TRAINER if stage == SELF_TRAINING else stage


def row_name(spec: str) -> str:
    """Name of the spec's row in results.md / results.json: ``A + B`` for a chain, the trainer name otherwise."""
    return f" {SEPARATOR} ".join(stages(spec))


def check_specs(specs: Sequence[str]) -> List[str]:
    """Check the spec syntax; returns every distinct stage trainer name (for the trainer lookup), in order.

    ``SelfTraining`` (:mod:`nnunet_mona.benchmark.self_training`) is a spec of its own or the first stage of a chain
    (``SelfTraining+nnUNetTrainerMeanTeacher``: the SelfTraining row's final model is the next stage's start); it
    contributes the trainer it trains (nnUNetTrainerBudget) to the returned names.
    Refuses duplicate specs, empty stage names (``A++B``, ``+A``) and a trainer twice in one chain (both stages
    would share one nnU-Net results folder)."""
    if len(set(specs)) != len(specs):
        raise BenchmarkError(f"Duplicate trainer specs in --trainers: {list(specs)}")
    names: List[str] = []
    for spec in specs:
        parts = stages(spec)
        if any(not p.strip() or p != p.strip() for p in parts):
            raise BenchmarkError(f"Empty or padded stage name in trainer spec {spec!r}: write A{SEPARATOR}B, "
                                 f"trainer names separated by '{SEPARATOR}' without spaces")
        if SELF_TRAINING in parts[1:]:
            raise BenchmarkError(f"Trainer spec {spec!r}: {SELF_TRAINING} (plain nnU-Net, pseudo-labels, plain "
                                 f"nnU-Net again) can only be the first stage of a chain, e.g. "
                                 f"{SELF_TRAINING}{SEPARATOR}nnUNetTrainerMeanTeacher")
        if len(set(parts)) != len(parts):
            raise BenchmarkError(f"Trainer spec {spec!r} names a trainer twice; every stage needs its own trainer")
        names += [p for p in map(stage_trainer, parts) if p not in names]
    return names
