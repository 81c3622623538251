"""How hard each loss term of a trained semi-supervised model pulls on its network: for a checkpoint, the norm of
every weighted term's gradient on the student's decoder divided by the supervised loss's (the trainer's own
``gradient_monitor``), averaged over training steps on the model's own labeled and unlabeled data.

The weights stay those of the checkpoint: the optimizer's learning rate is 0 for these steps (nnU-Net's SGD moves
nothing then, weight decay included) and the EMA teachers are put back after every step. Memory banks and queues
fill as in training, so a term that needs them is measured as it was trained.

    nnUNetv2_mona_gradient_shares OUTPUT/labeled_3/nnUNet_results/Dataset.../nnUNetTrainerMONA__nnUNetPlans__2d/fold_0/checkpoint_final.pth \
        --preprocessed OUTPUT/labeled_3/nnUNet_preprocessed --steps 20
"""
import copy
import os
import tempfile
from typing import Dict, List, Optional

import numpy as np
import torch

from nnunet_mona.diagnostics.command_line import checkpoint_parser, parse_checkpoint_arguments, report_checkpoints
from nnunet_mona.modules.ema_teacher import EMATeacher
from nnunet_mona.trainers.ready_trainer import finish_loaders, start_loaders

REFERENCE_KEY = "|sup|"


def ema_teachers(trainer) -> List[EMATeacher]:
    """Every EMA teacher the trainer holds: the network's and any inside its checkpointed modules (MONA's head)."""
    found = [trainer.teacher]
    for attribute in trainer.checkpointed_module_names().values():
        module = getattr(trainer, attribute, None)
        if isinstance(module, torch.nn.Module):
            found += [m for m in module.modules() if isinstance(m, EMATeacher) and m is not trainer.teacher]
    return found


def measure_gradient_shares(trainer, steps: int) -> Dict[str, Dict[str, float]]:
    """{term: {'mean', 'std'}} over ``steps`` semi-supervised steps of ||grad term|| / ||grad sup|| on the decoder;
    under '|sup|' the supervised gradient's own norm. The trainer must have its loaders started."""
    if not hasattr(trainer, "log_gradient_norms"):
        raise ValueError(f"{type(trainer).__name__} is not a semi-supervised trainer: it has no loss terms besides "
                         f"nnU-Net's supervised loss")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1 (got {steps})")
    if trainer.in_supervised_warmup():
        raise ValueError(f"the checkpoint is at epoch {trainer.current_epoch}, inside the supervised warm-up "
                         f"(epochs 0-{trainer.supervised_warmup_epochs - 1}): no semi-supervised term is trained yet")
    trainer.log_gradient_norms = True
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.0
    teachers = ema_teachers(trainer)
    samples: Dict[str, List[float]] = {}
    for _ in range(steps):
        saved = [copy.deepcopy(t.state_dict()) for t in teachers]
        trainer._gradient_norms_epoch = None  # the monitor measures once per epoch: every step here
        trainer.train_step(next(trainer.dataloader_train))
        for teacher, state in zip(teachers, saved):
            teacher.load_state_dict(state)
        for name, value in (trainer._gradient_norms or {}).items():
            samples.setdefault(name, []).append(value)
        trainer._gradient_norms = None
    return {name: {"mean": float(np.mean(v)), "std": float(np.std(v))} for name, v in samples.items()}


def gradient_shares_of_checkpoint(path: str, preprocessed_root: str, steps: int, seed: int = 0,
                                  num_epochs: Optional[int] = None) -> dict:
    from nnunet_mona.diagnostics.checkpoint_trainer import trainer_from_checkpoint
    with tempfile.TemporaryDirectory(prefix="mona_gradient_shares_") as scratch:
        torch.manual_seed(seed)
        np.random.seed(seed)
        trainer = trainer_from_checkpoint(path, preprocessed_root, scratch, num_epochs)
        start_loaders(trainer)
        try:
            shares = measure_gradient_shares(trainer, steps)
        finally:
            finish_loaders(trainer)
        return {"checkpoint": os.path.abspath(path), "trainer": type(trainer).__name__,
                "epoch": int(trainer.current_epoch), "steps": steps, "loss_weights": dict(trainer.loss_weights),
                "shares": shares}


def markdown_table(reports: List[dict]) -> str:
    terms = sorted({t for r in reports for t in r["shares"] if t != REFERENCE_KEY})
    lines = ["| trainer | epoch | " + " | ".join(terms) + " | abs. supervised gradient |",
             "|---|---:|" + "---:|" * (len(terms) + 1)]
    for r in reports:
        cells = [f"{r['shares'][t]['mean']:.3f} ± {r['shares'][t]['std']:.3f}" if t in r["shares"] else "-"
                 for t in terms]
        lines.append(f"| {r['trainer']} | {r['epoch']} | " + " | ".join(cells) +
                     f" | {r['shares'][REFERENCE_KEY]['mean']:.3g} |")
    return "\n".join(lines)


def entry_point(argv=None):
    parser = checkpoint_parser("nnUNetv2_mona_gradient_shares",
                               "Decoder-gradient norm of each weighted loss term relative to nnU-Net's supervised "
                               "loss, for trained semi-supervised checkpoints (weights unchanged; learning rate 0 "
                               "while measuring).")
    parser.add_argument("--steps", type=int, default=20, help="training steps to average over (default 20)")
    parser.add_argument("--num_epochs", type=int, help="the training's epoch count, for a checkpoint taken before the "
                                                       "end (default: the epochs the checkpoint has trained)")
    args = parse_checkpoint_arguments(parser, argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1 (got {args.steps})")
    report_checkpoints(args, "gradient shares", lambda path: gradient_shares_of_checkpoint(
        path, args.preprocessed, args.steps, args.seed, args.num_epochs), markdown_table)
