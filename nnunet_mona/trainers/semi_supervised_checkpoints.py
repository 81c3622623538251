"""Checkpoints of a semi-supervised training: nnU-Net's keys plus ``checkpoint['semi_supervised']`` (teacher, step
counters, random streams, the trainer's extra modules), and the teacher-only checkpoint that
``nnUNetv2_predict -chk checkpoint_final_teacher.pth`` loads."""
from typing import Dict

import torch

from nnunet_mona.modules.ema_teacher import unwrap_network


class SemiSupervisedCheckpointsMixin:
    """Needs ``teacher``, ``random_state()``, ``num_nonfinite_steps`` and nnU-Net's checkpoint attributes."""

    # {key in checkpoint['semi_supervised']: attribute holding an nn.Module (None when unused)}: state that a
    # resume needs beyond nnU-Net's keys. A subclass adds its own entries; they are merged along the class
    # hierarchy (checkpointed_module_names), so no subclass overrides the save / load methods for it.
    checkpointed_modules = {"auxiliary_modules": "auxiliary_modules",
                            "distribution_alignment": "distribution_alignment",
                            "adaptive_threshold": "adaptive_threshold"}

    @classmethod
    def checkpointed_module_names(cls) -> Dict[str, str]:
        """``checkpointed_modules`` of every class from the base down (a subclass's entry wins)."""
        names: Dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            names.update(klass.__dict__.get("checkpointed_modules", {}))
        return names

    def extra_checkpoint_state(self) -> dict:
        """Everything a resume needs beyond nnU-Net's keys: the teacher, the step counters, the random streams
        and every module named by :meth:`checkpointed_module_names` that this training uses."""
        state = {"teacher": self.teacher.state_dict(), "num_nonfinite_steps": self.num_nonfinite_steps,
                 "rng_state": self.random_state()}
        for key, attribute in self.checkpointed_module_names().items():
            module = getattr(self, attribute, None)
            if module is not None:
                state[key] = module.state_dict()
        return state

    def load_extra_checkpoint_state(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self._teacher_restored = True
        self.num_nonfinite_steps = state.get("num_nonfinite_steps", 0)
        self._pending_rng_state = state.get("rng_state")
        for key, attribute in self.checkpointed_module_names().items():
            module = getattr(self, attribute, None)
            if module is not None and key in state:
                module.load_state_dict(state[key])

    def _base_checkpoint(self, network_weights: dict) -> dict:
        return {
            "network_weights": network_weights,
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = self._base_checkpoint(unwrap_network(self.network).state_dict())
        checkpoint["semi_supervised"] = self.extra_checkpoint_state()
        torch.save(checkpoint, filename)

    def save_teacher_checkpoint(self, filename: str) -> None:
        """A checkpoint whose 'network_weights' are the teacher's: ``nnUNetv2_predict -chk <name>``."""
        checkpoint = self._base_checkpoint(self.teacher.model.state_dict())
        checkpoint.pop("optimizer_state")
        checkpoint.pop("grad_scaler_state")
        torch.save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        checkpoint = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False) \
            if isinstance(filename_or_checkpoint, str) else filename_or_checkpoint
        if "optimizer_state" not in checkpoint:
            raise RuntimeError("This is a teacher-only checkpoint (for prediction with -chk); it cannot be used to "
                               "resume training. Resume from checkpoint_final/latest/best.pth instead.")
        super().load_checkpoint(filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else checkpoint)
        if "semi_supervised" in checkpoint:
            self.load_extra_checkpoint_state(checkpoint["semi_supervised"])
        else:
            # e.g. a plain nnUNetTrainer checkpoint: start the teacher from the loaded student
            self.teacher.copy_from(self.network)
            self._teacher_restored = True
