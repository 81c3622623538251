"""Supervised warm-up inside one semi-supervised training: plain nnU-Net first, then the method.

Started from random weights, the EMA teacher gives the unlabeled patches mostly background for much of a short
training, so the unlabeled stream teaches little. Started from plain nnU-Net's final model (a second training with
``-pretrained_weights``) Mean Teacher learns far more from it. The warm-up does the same in one ``nnUNetv2_train``:
the first ``supervised_warmup_fraction`` of the epochs are nnU-Net's supervised step alone, with their own poly
learning-rate decay; at the first semi-supervised epoch the teacher becomes a copy of the student, the SGD momentum
is cleared and the learning rate starts its poly decay again over the remaining epochs, as the second training of
that chain would. Everything is a function of the epoch number, so a resume is exact in either phase.
"""
import math
from typing import Tuple

from torch.optim.lr_scheduler import _LRScheduler


def supervised_warmup_epochs(num_epochs: int, fraction: float) -> int:
    """Epochs of the supervised phase: ``round(fraction * num_epochs)``, for a benchmark that must train the recipe
    it names. A fraction outside [0, 1), or one that leaves no semi-supervised epoch, is an error that says what
    to set."""
    epochs = _rounded_warmup_epochs(num_epochs, fraction)
    if epochs >= num_epochs:
        raise ValueError(f"supervised_warmup_fraction {fraction} of {num_epochs} epochs leaves no semi-supervised "
                         f"epoch; lower it or train more epochs (nnUNet_mona_epochs)")
    return epochs


def fitted_warmup_epochs(num_epochs: int, fraction: float) -> Tuple[int, bool]:
    """What a training does: ``round(fraction * num_epochs)`` supervised epochs, shortened so that at least one
    semi-supervised epoch stays (a 1-epoch smoke run of a warm-started trainer is semi-supervised throughout).
    Returns (epochs, shortened). A fraction outside [0, 1) is an error."""
    epochs = _rounded_warmup_epochs(num_epochs, fraction)
    if epochs >= num_epochs:
        return max(num_epochs - 1, 0), True
    return epochs, False


def _rounded_warmup_epochs(num_epochs: int, fraction: float) -> int:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"supervised_warmup_fraction must be a number in [0, 1) (the share of the epochs trained "
                         f"supervised only before the semi-supervised phase), got {fraction!r}")
    return int(math.floor(fraction * num_epochs + 0.5))


class PhasedPolyLRScheduler(_LRScheduler):
    """nnU-Net's poly decay ``lr0 (1 - e / E) ** 0.9``, run once over the warm-up epochs [0, W) and again over the
    semi-supervised epochs [W, num_epochs). ``step(epoch)`` sets the rate of that epoch (nnU-Net calls it at each
    epoch start); W = 0 is nnU-Net's PolyLRScheduler."""

    def __init__(self, optimizer, initial_lr: float, num_epochs: int, warmup_epochs: int, exponent: float = 0.9):
        if not 0 <= warmup_epochs < num_epochs:
            raise ValueError(f"warmup_epochs must be in [0, {num_epochs}), got {warmup_epochs}")
        self.initial_lr = initial_lr
        self.num_epochs = num_epochs
        self.warmup_epochs = warmup_epochs
        self.exponent = exponent
        self.ctr = 0
        super().__init__(optimizer, -1)

    def lr_at(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            progress = epoch / self.warmup_epochs
        else:
            progress = (epoch - self.warmup_epochs) / (self.num_epochs - self.warmup_epochs)
        return self.initial_lr * (1.0 - min(progress, 1.0)) ** self.exponent

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.lr_at(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr for _ in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr
