"""What a semi-supervised training reports per epoch: the mean of every loss term in nnU-Net's logger and log
file, the gradient norms of the first step, the gradient scaler's skipped steps, class shares and adaptive
thresholds, and warnings for degenerate terms (chance-level or collapsed contrastive losses)."""
from typing import Dict, List

import numpy as np
from nnunetv2.utilities.collate_outputs import collate_outputs
from torch import distributed as dist

from nnunet_mona.modules.ema_teacher import unwrap_network
from nnunet_mona.trainers.progress_logging import term_key
from nnunet_mona.trainers.term_monitor import degenerate_term_warnings


class EpochDiagnosticsMixin:
    """Needs ``all_term_names``, ``logger``, ``print_to_log_file``, ``unsupervised_weight_factor()`` and the
    monitoring attributes set by the trainer's ``__init__``."""

    # names of terms whose value 0 means a collapsed representation (e.g. MONA's 'nn')
    collapse_zero_terms: tuple = ()

    def monitored_parameters(self):
        """Parameters whose gradients ``log_gradient_norms`` compares: the student's decoder (shared by every
        term), or the whole student if the architecture has no ``decoder``."""
        net = unwrap_network(self.network)
        return list(getattr(net, "decoder", net).parameters())

    def on_train_epoch_end(self, train_outputs: List[dict]):
        outputs = collate_outputs(train_outputs)
        for name in ["loss"] + self.all_term_names:
            values = outputs.get(name, np.array([np.nan]))
            if self.is_ddp:
                gathered = [None for _ in range(dist.get_world_size())]
                dist.all_gather_object(gathered, values)
                values = np.vstack(gathered)
            reducer = np.nansum if name == "skipped_steps" else np.nanmean
            value = float(reducer(values)) if np.any(np.isfinite(values)) else float("nan")
            if name == "loss":
                self.logger.log("train_losses", value, self.current_epoch)
            else:
                self.logger.log(term_key(name), value, self.current_epoch)

    def on_epoch_end(self):
        terms = {n: self.logger.get_value(term_key(n), step=-1) for n in self.all_term_names}
        self.print_to_log_file("loss terms", {k: round(float(v), 4) for k, v in terms.items()},
                               f"(unsupervised ramp {self.unsupervised_weight_factor():.3f})")
        self._print_gradient_norms()
        if self.grad_scaler is not None and self.mixed_precision:
            self.print_to_log_file(f"gradient scaler: {self.amp_skipped_steps} step(s) skipped this epoch for "
                                   f"inf / NaN gradients, scale now {self.grad_scaler.get_scale():g}")
        self.amp_skipped_steps = 0
        alignment = self.distribution_alignment
        if alignment is not None and alignment.teacher_share is not None and alignment.labeled_share is not None:
            self.print_to_log_file("class share labeled", [round(float(v), 4) for v in alignment.labeled_share],
                                   "teacher (unaligned)", [round(float(v), 4) for v in alignment.teacher_share])
        if self.adaptive_threshold is not None and self.adaptive_threshold.class_confidence is not None:
            self.print_to_log_file("teacher confidence per pseudo-class (class-adaptive thresholds)",
                                   [round(float(v), 4) for v in self.adaptive_threshold.class_confidence])
        for message in degenerate_term_warnings({k: float(v) for k, v in terms.items()}, self.chance_values(),
                                                self.collapse_zero_terms):
            self.print_to_log_file(message)
        super().on_epoch_end()

    def _print_gradient_norms(self):
        if self._gradient_norms is not None:
            self.print_to_log_file("decoder gradient norm relative to the supervised loss (first step)",
                                   {k: round(v, 4) for k, v in self._gradient_norms.items()})
            self._gradient_norms = None

    def chance_values(self) -> Dict[str, float]:
        """{term: value it takes when every similarity is equal}; contrastive trainers override."""
        return {}
