"""Semi-supervised plumbing shared by every nnunet_mona trainer.

One training iteration (see docs/design.md):
  1. labeled batch from nnU-Net's own loader (unchanged);
  2. unlabeled batch: one spatial transform, a weak and a strong intensity view of the same patch;
  3. the EMA teacher predicts the weak view (no grad, fp32 softmax);
  4. one student forward on [labeled ; strong]; nnU-Net's deep-supervision Dice+CE on the labeled
     part, the method's losses (``compute_unlabeled_losses``) on the rest;
  5. one backward and optimizer step, then the EMA update and ``after_optimizer_step``.

With ``supervised_warmup_fraction`` > 0 the first epochs run only nnU-Net's supervised step on the labeled batch
(trainers.supervised_warmup); the steps above start after them, from a teacher copied from the student.

Subclasses are small: they set class attributes and implement ``compute_unlabeled_losses`` (and, when they have
heads or memory banks, ``build_auxiliary_modules`` and a ``checkpointed_modules`` entry).

The class is this file's set-up, data and training step, plus one mixin per seam: the random streams that
``--c`` restores (trainers.random_streams), the teacher's prediction pipeline (trainers.teacher_pipeline), the
per-epoch diagnostics (trainers.epoch_diagnostics) and the checkpoints (trainers.semi_supervised_checkpoints).
"""
import math
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch import distributed as dist

from nnunet_mona.data.paths import unlabeled_preprocessed_folder
from nnunet_mona.trainers.budget import TrainedThisRun, apply_budget_from_environment, seed_from_environment
from nnunet_mona.modules.class_adaptive_threshold import ClassAdaptiveThreshold
from nnunet_mona.modules.distribution_alignment import ClassDistributionAlignment, label_map_class_share
from nnunet_mona.modules.distributed import all_gather_concat, average_gradients_, broadcast_module_, rank_share
from nnunet_mona.modules.ema_teacher import EMATeacher
from nnunet_mona.trainers.gradient_monitor import relative_gradient_norms
from nnunet_mona.trainers.progress_logging import SemiSupervisedLocalLogger
from nnunet_mona.trainers.epoch_diagnostics import EpochDiagnosticsMixin
from nnunet_mona.trainers.random_streams import RandomStreamsMixin
from nnunet_mona.trainers.removed_overrides import refuse_removed_overrides
from nnunet_mona.trainers.semi_supervised_checkpoints import SemiSupervisedCheckpointsMixin
from nnunet_mona.trainers.supervised_warmup import PhasedPolyLRScheduler, fitted_warmup_epochs
from nnunet_mona.trainers.teacher_pipeline import TeacherPipelineMixin


def sigmoid_rampup(progress: float) -> float:
    """exp(-5 (1 - t)^2) for t in [0, 1] (Laine & Aila), 1 after the ramp."""
    t = float(np.clip(progress, 0.0, 1.0))
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


class nnUNetTrainerSemiSupervised(RandomStreamsMixin, TeacherPipelineMixin, EpochDiagnosticsMixin,
                                  SemiSupervisedCheckpointsMixin, TrainedThisRun, nnUNetTrainer):
    """Base class: EMA teacher, unlabeled loader, weak/strong views, loss-term logging.

    Not meant to be trained directly (it has no unsupervised loss); use a method trainer such as
    ``nnUNetTrainerMeanTeacher``.
    """

    # ---- hyper-parameters (class attributes: a variant is a three-line subclass) ----
    ema_decay: float = 0.99
    ema_warmup: bool = True
    # shares of the plans' batch size B given to labeled and to unlabeled patches. Half and half
    # (MONA: 4 + 4, SSL4MIS: 12 + 12) keeps one student forward at B patches, as in plain nnU-Net,
    # so the plans' GPU-memory estimate still holds. 1.0 / 1.0 doubles the batch (B + B).
    labeled_batch_fraction: float = 0.5
    unlabeled_batch_fraction: float = 0.5
    # neither part gets fewer patches than this: nnU-Net's planner never plans a batch below 2, and
    # mixing needs a partner image (small plans batches, e.g. 2, thus train 2 + 2)
    min_part_batch_size: int = 2
    # this share of num_epochs first trains nnU-Net's supervised step alone (own poly LR decay); then the teacher
    # starts as a copy of the student and the LR decays again over the rest (trainers.supervised_warmup: the
    # chain plain -> method inside one training). 0: semi-supervised from the first step
    supervised_warmup_fraction: float = 0.0
    # sigmoid ramp-up of every unsupervised term over this fraction of the semi-supervised epochs (0: none)
    unsupervised_rampup_fraction: float = 0.1
    # weight of nnU-Net's supervised Dice+CE on the labeled part (ACTION: 0.5)
    supervised_weight: float = 1.0
    # weight of each unsupervised term returned by compute_unlabeled_losses (missing: 1.0)
    loss_weights: Dict[str, float] = {}
    # names of the terms logged per epoch ('sup' is added automatically)
    loss_term_names: tuple = ()
    # names among them that are only monitored (e.g. the confident-pixel fraction), never added to the loss
    diagnostic_names: tuple = ()
    # share of nnUNet_n_proc_DA given to the unlabeled augmentation workers
    unlabeled_worker_share: float = 0.5
    # rescale the teacher's class probabilities so that their running share on the unlabeled pixels matches
    # the labeled targets' class share (modules.distribution_alignment): counters a teacher that under-segments
    # (on here, for a teacher that starts from random weights; nnUNetTrainerMeanTeacher, which starts from its
    # supervised warm-up, has it off: there it over-segments, docs/results.md)
    align_class_distribution: bool = True
    # how fast the running share of the teacher's probabilities forgets (the labeled share: 0.99). 0.99 keeps a
    # random teacher's near-uniform start for hundreds of steps (modules.distribution_alignment); 0.9 follows the
    # teacher within about ten steps (nnUNetTrainerMeanTeacher_alignmentMomentum09) but did no better
    alignment_teacher_momentum: float = 0.99
    # what the teacher is aligned to: 'patches', the running share of the labeled training patches (with nnU-Net's
    # foreground oversampling and spatial augmentation in it), or 'label_maps', the fixed share of the labeled
    # cases' whole label maps, every slice alike in 2d (modules.distribution_alignment.label_map_class_share)
    alignment_target: str = "patches"
    # per-class pseudo-label thresholds scaled by the teacher's running confidence per class, the trainer's fixed
    # threshold as the ceiling (modules.class_adaptive_threshold). Off: where the teacher's argmax is rarely
    # foreground at all, a lower foreground threshold has little to admit
    class_adaptive_threshold: bool = False
    # once per epoch (first step), log each weighted term's decoder-gradient norm relative to the supervised
    # loss's (gradient_monitor). Off by default: a few extra backward passes per epoch
    log_gradient_norms: bool = False
    # write checkpoint_final_teacher.pth (teacher weights as 'network_weights', usable with -chk)
    export_teacher_checkpoint: bool = True
    # stop after this many consecutive non-finite losses (each one is skipped and counted)
    max_consecutive_nonfinite_steps: int = 20
    # CUDA only: nnU-Net's fp16 autocast + gradient scaler. False trains in fp32 (slower, more memory), to tell
    # a precision problem from a method problem
    mixed_precision: bool = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        refuse_removed_overrides(type(self).__name__)  # before nnU-Net creates anything
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_budget_from_environment(self)
        self.teacher: Optional[EMATeacher] = None
        self.distribution_alignment: Optional[ClassDistributionAlignment] = None
        self.adaptive_threshold: Optional[ClassAdaptiveThreshold] = None
        self.auxiliary_modules: Optional[nn.ModuleDict] = None
        self.dataloader_unlabeled = None
        self.unlabeled_batch_size = None
        self.labeled_patches: Optional[Dict[str, torch.Tensor]] = None  # set in train_step (see there)
        self.num_nonfinite_steps = 0
        self._consecutive_nonfinite = 0
        self._teacher_restored = False
        self._pending_rng_state = None  # restored once the loaders exist (see on_train_start)
        self._gradient_norms: Optional[Dict[str, float]] = None  # of this epoch's first step
        self._gradient_norms_epoch = -1
        self.amp_skipped_steps = 0  # this epoch's steps the gradient scaler skipped (inf / NaN gradients)
        self.supervised_warmup_epochs = 0  # set with the optimizer (configure_optimizers), once the budget is final
        # every loss term gets a key in nnU-Net's logger and a curve in progress.png
        self.all_term_names = ["sup"] + [n for n in self.loss_term_names if n != "sup"] + ["skipped_steps"]
        self.logger.local_logger = SemiSupervisedLocalLogger(self.all_term_names)

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        if self.was_initialized:
            return
        if self.label_manager.has_regions:
            raise RuntimeError(f"{self.__class__.__name__} supports label-based datasets only; this dataset uses "
                               f"regions (overlapping sigmoid outputs), which its teacher/pseudo-labels do not model.")
        super().initialize()
        teacher_net = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, enable_deep_supervision=False).to(self.device)
        # built after super().initialize(): under DDP the student was broadcast from rank 0 already,
        # so every rank starts from the same teacher
        self.teacher = EMATeacher(teacher_net, self.network, decay=self.ema_decay, warmup=self.ema_warmup)
        self.distribution_alignment = ClassDistributionAlignment(
            self.label_manager.num_segmentation_heads, teacher_momentum=self.alignment_teacher_momentum,
            labeled_share=self.labeled_label_map_share()) if self.align_class_distribution else None
        self.adaptive_threshold = ClassAdaptiveThreshold(self.label_manager.num_segmentation_heads) \
            if self.class_adaptive_threshold else None
        if self.is_ddp and self.auxiliary_modules is not None:
            # heads are not wrapped by DDP: start them equal on every rank (gradients are averaged per step)
            broadcast_module_(self.auxiliary_modules)

    def labeled_label_map_share(self) -> Optional[torch.Tensor]:
        """(K,) fixed alignment target of ``alignment_target = 'label_maps'`` (None for 'patches'): the class share
        of this fold's labeled training cases, read once from the preprocessed label maps."""
        if self.alignment_target == "patches":
            return None
        if self.alignment_target != "label_maps":
            raise ValueError(f"alignment_target {self.alignment_target!r}: use 'patches' or 'label_maps'")
        dataset_tr, _ = self.get_tr_and_val_datasets()
        segs = (dataset_tr.load_case(key)[1][0] for key in dataset_tr.identifiers)  # (Z, Y, X) or (Y, X) each
        share = label_map_class_share(segs, self.label_manager.num_segmentation_heads,
                                      slice_axis=0 if len(self.configuration_manager.patch_size) == 2 else None)
        self.print_to_log_file(f"alignment target (label maps of {len(dataset_tr.identifiers)} labeled cases): "
                               f"{[round(float(v), 4) for v in share]}")
        return share

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()  # the plans' batch (this rank's share under DDP)
        plans_batch = self.batch_size
        self.batch_size = self._part_batch_size(plans_batch, self.labeled_batch_fraction)
        self.unlabeled_batch_size = self._part_batch_size(plans_batch, self.unlabeled_batch_fraction)
        self.print_to_log_file(f"Batch: {self.batch_size} labeled + {self.unlabeled_batch_size} unlabeled patches "
                               f"(plans batch size {plans_batch})")

    def _part_batch_size(self, plans_batch: int, fraction: float) -> int:
        return max(self.min_part_batch_size, int(round(plans_batch * fraction)))

    def build_auxiliary_modules(self) -> Optional[nn.ModuleDict]:
        """Trainable modules outside ``self.network`` (projection heads...). Called before the
        optimizer is built; their parameters are optimised with the network's. None: no modules."""
        return None

    def configure_optimizers(self):
        modules = self.build_auxiliary_modules()
        self.auxiliary_modules = modules.to(self.device) if modules is not None else None
        params = list(self.network.parameters())
        if self.auxiliary_modules is not None:
            params += list(self.auxiliary_modules.parameters())
        optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        self.supervised_warmup_epochs, shortened = fitted_warmup_epochs(self.num_epochs,
                                                                         self.supervised_warmup_fraction)
        if shortened:
            self.print_to_log_file(f"Supervised warm-up: {self.supervised_warmup_fraction} of {self.num_epochs} "
                                   f"epochs would leave no semi-supervised epoch; shortened to "
                                   f"{self.supervised_warmup_epochs} epochs")
        if self.supervised_warmup_epochs == 0:
            return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)
        self.print_to_log_file(f"Supervised warm-up: epochs 0-{self.supervised_warmup_epochs - 1} train nnU-Net's "
                               f"supervised step alone; the semi-supervised phase starts at epoch "
                               f"{self.supervised_warmup_epochs} from a teacher copied from the student, the "
                               f"learning rate decaying again from {self.initial_lr}")
        return optimizer, PhasedPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs,
                                                self.supervised_warmup_epochs)

    def trainable_parameters(self) -> List[nn.Parameter]:
        params = list(self.network.parameters())
        if self.auxiliary_modules is not None:
            params += list(self.auxiliary_modules.parameters())
        return params

    # ------------------------------------------------------------------ data
    def _fold_split_entry(self) -> Optional[dict]:
        """This fold's entry of splits_final.json (with its 'unlabeled' list), or None."""
        if self.fold == "all":
            return None
        splits_file = join(self.preprocessed_dataset_folder_base, "splits_final.json")
        if not isfile(splits_file):
            return None
        splits = load_json(splits_file)
        return splits[self.fold] if self.fold < len(splits) else None

    def unlabeled_cases(self, labeled_ids: List[str]) -> Dict[str, str]:
        """{case id: folder holding <id>.b2nd} of this fold's unlabeled pool: the split's
        'unlabeled' list and the preprocessed imagesUnlabeled folder (checked to be current).
        Override to add sources (e.g. other datasets); labels are never part of it."""
        from nnunet_mona.data.unlabeled_pool import resolve_unlabeled_cases

        data_identifier = self.configuration_manager.data_identifier
        if os.path.isdir(unlabeled_preprocessed_folder(self.preprocessed_dataset_folder_base, data_identifier)):
            from nnunet_mona.data.unlabeled_preprocessing import check_unlabeled_folder_is_current
            check_unlabeled_folder_is_current(self.preprocessed_dataset_folder_base, self.plans_manager.plans_name,
                                              self.configuration_name, self.plans_manager.plans)
        return resolve_unlabeled_cases(self.preprocessed_dataset_folder_base, data_identifier,
                                       self._fold_split_entry(), labeled_ids)

    def get_unlabeled_dataloader(self, labeled_ids: List[str]):
        from nnunet_mona.data.unlabeled_loader import make_unlabeled_augmenter, nnUNetUnlabeledDataLoader
        from nnunet_mona.data.unlabeled_pool import UnlabeledImageDataset
        from nnunet_mona.data.unlabeled_transforms import build_unlabeled_transforms

        folders_by_id = self.unlabeled_cases(labeled_ids)
        if self.is_ddp:
            # each rank draws from its own share of the pool
            ids = rank_share(list(folders_by_id), dist.get_rank(), dist.get_world_size())
            folders_by_id = {i: folders_by_id[i] for i in ids}
        self.print_to_log_file(f"Unlabeled pool: {len(folders_by_id)} cases, {self.unlabeled_batch_size} unlabeled "
                               f"patches per iteration")
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        spatial, weak, strong = build_unlabeled_transforms(self.configuration_manager.patch_size, rotation_for_DA,
                                                           mirror_axes, do_dummy_2d_data_aug)
        loader = nnUNetUnlabeledDataLoader(UnlabeledImageDataset(folders_by_id), self.unlabeled_batch_size,
                                           initial_patch_size, self.configuration_manager.patch_size,
                                           spatial, weak, strong)
        n_allowed = get_allowed_n_proc_DA()
        n_proc = 0 if n_allowed == 0 else max(1, int(round(self.unlabeled_worker_share * n_allowed)))
        augmenter = make_unlabeled_augmenter(loader, n_proc)
        _ = next(augmenter)  # start the workers now, like nnU-Net does
        return augmenter

    def get_dataloaders(self):
        dataloader_train, dataloader_val = super().get_dataloaders()
        tr_keys, val_keys = self.do_split()
        self.dataloader_unlabeled = self.get_unlabeled_dataloader(list(tr_keys) + list(val_keys))
        return dataloader_train, dataloader_val

    # ------------------------------------------------------------------ training

    def on_train_start(self):
        super().on_train_start()
        if self.current_epoch == 0 and not self._teacher_restored:
            # fresh run (possibly with -pretrained_weights loaded after initialize): teacher = student
            self.teacher.copy_from(self.network)
        seed = seed_from_environment()
        if seed is not None and self._pending_rng_state is None:
            self.seed_in_process_loaders(seed)
        if self._pending_rng_state is not None:
            # after the loaders were built and primed: continue exactly where the checkpoint was taken
            self.set_random_state(self._pending_rng_state)
            self._pending_rng_state = None

    def on_train_end(self):
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()
        if self.export_teacher_checkpoint and self.local_rank == 0 and not self.disable_checkpointing:
            self.save_teacher_checkpoint(join(self.output_folder, "checkpoint_final_teacher.pth"))

    def in_supervised_warmup(self) -> bool:
        return self.current_epoch < self.supervised_warmup_epochs

    def on_train_epoch_start(self):
        if self.supervised_warmup_epochs > 0 and self.current_epoch == self.supervised_warmup_epochs:
            self.start_semi_supervised_phase()
        super().on_train_epoch_start()

    def start_semi_supervised_phase(self) -> None:
        """End of the supervised warm-up: what a second training started from this model with
        ``-pretrained_weights`` would do (teacher = student with a fresh EMA warm-up, no SGD momentum). A
        function of the model alone, so a resume at this epoch repeats it exactly."""
        self.teacher.copy_from(self.network)
        self.teacher.num_updates.zero_()
        self.optimizer.state.clear()
        self.print_to_log_file(f"Supervised warm-up done ({self.supervised_warmup_epochs} epochs): teacher copied "
                               f"from the student, SGD momentum cleared; semi-supervised training starts")

    def semi_supervised_progress(self) -> float:
        """Share in [0, 1] of the semi-supervised epochs done before the current one (0 during the warm-up): the
        clock of the methods' schedules, which start at the switch as a second training would."""
        semi_supervised_epochs = self.num_epochs - self.supervised_warmup_epochs
        done = self.current_epoch - self.supervised_warmup_epochs
        return min(max(done / max(1, semi_supervised_epochs), 0.0), 1.0)

    def unsupervised_weight_factor(self) -> float:
        """Ramp-up factor in [0, 1] for every unsupervised term at the current epoch (0 during the warm-up)."""
        if self.in_supervised_warmup():
            return 0.0
        if self.unsupervised_rampup_fraction <= 0:
            return 1.0
        semi_supervised_epochs = self.num_epochs - self.supervised_warmup_epochs
        return sigmoid_rampup((self.current_epoch - self.supervised_warmup_epochs)
                              / max(1.0, self.unsupervised_rampup_fraction * semi_supervised_epochs))

    def autocast_context(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" and self.mixed_precision \
            else dummy_context()

    def next_unlabeled_batch(self) -> Dict[str, torch.Tensor]:
        """{'data_weak', 'data_strong': (Bu, C, *P) float, 'valid_mask': (Bu, 1, *P) bool} on the device."""
        batch = next(self.dataloader_unlabeled)
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def compute_unlabeled_losses(self, student_outputs_unlabeled, student_input: Dict[str, torch.Tensor],
                                 unlabeled: Dict[str, torch.Tensor], labeled_outputs, labeled_target
                                 ) -> Dict[str, torch.Tensor]:
        """Unweighted unsupervised loss terms (scalars). ``student_outputs_unlabeled`` is the
        student's output for the unlabeled part: a list (deep supervision, full resolution first)
        or a tensor (B, K, *P). Values are weighted with ``loss_weights`` and the ramp-up."""
        raise NotImplementedError(f"{self.__class__.__name__} must implement compute_unlabeled_losses")

    def after_optimizer_step(self, step_state: dict) -> None:
        """Hook after the optimizer step and the EMA update (memory-bank enqueue...)."""

    @staticmethod
    def keys_from_all_ranks(*tensors: torch.Tensor):
        """Memory-bank / queue keys of every DDP rank, in rank order (identity on one process), so
        that banks stay identical across ranks. Each tensor (N_r, ...) -> (sum_r N_r, ...)."""
        gathered = tuple(all_gather_concat(t.contiguous()) for t in tensors)
        return gathered if len(gathered) > 1 else gathered[0]

    def _labeled_batch_on_device(self, batch: dict):
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        return data, target

    def supervised_step(self, batch: dict) -> dict:
        """nnU-Net's own step on the labeled batch (deep-supervision Dice+CE, weight 1), for the warm-up epochs;
        the unlabeled loader is not read and the teacher not updated."""
        data, target = self._labeled_batch_on_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast_context():
            sup = self.loss(self.network(data), target)
        if not torch.isfinite(sup):
            return self._skip_nonfinite_step(sup, {})
        self._consecutive_nonfinite = 0
        self._backward_and_step(sup)
        return {"loss": sup.detach().cpu().numpy(), "sup": sup.detach().cpu().numpy(), "skipped_steps": np.array(0.0)}

    def _backward_and_step(self, total: torch.Tensor) -> None:
        """Backward, gradient clipping at 12 (nnU-Net) and the optimizer step, through the gradient scaler
        when mixed precision is on."""
        scaler = self.grad_scaler if self.mixed_precision else None
        if scaler is not None:
            scaler.scale(total).backward()
            if self.is_ddp and self.auxiliary_modules is not None:
                average_gradients_(self.auxiliary_modules)
            scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), 12)
            scaler.step(self.optimizer)  # synchronises (reads found_inf), so reading the scale here costs no extra sync
            scale_before = scaler.get_scale()
            scaler.update()
            # the scaler lowers its scale exactly when it skipped the step (inf / NaN among the gradients)
            self.amp_skipped_steps += int(scaler.get_scale() < scale_before)
        else:
            total.backward()
            if self.is_ddp and self.auxiliary_modules is not None:
                average_gradients_(self.auxiliary_modules)
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), 12)
            self.optimizer.step()

    def train_step(self, batch: dict) -> dict:
        if self.in_supervised_warmup():
            return self.supervised_step(batch)
        data, target = self._labeled_batch_on_device(batch)
        unlabeled = self.next_unlabeled_batch()
        n_labeled = data.shape[0]

        self.optimizer.zero_grad(set_to_none=True)
        teacher_out = self.teacher_predict(unlabeled["data_weak"])
        if self.distribution_alignment is not None:
            teacher_out = self._aligned_teacher_output(teacher_out, target, unlabeled["valid_mask"][:, 0])
        if self.adaptive_threshold is not None:
            self.adaptive_threshold.observe(teacher_out["confidence"], teacher_out["pseudo_label"],
                                            unlabeled["valid_mask"][:, 0])
        # the labeled patches of this step, for views that mix them in (Mean Teacher's 'copy_paste')
        self.labeled_patches = {"data": data, "target": target[0] if isinstance(target, (list, tuple)) else target}
        try:
            student_input = self.make_student_unlabeled_input(unlabeled, teacher_out)
        finally:
            self.labeled_patches = None
        with self.autocast_context():
            # one student forward on [labeled ; unlabeled] (InstanceNorm: identical to two passes)
            output = self.network(torch.cat((data, student_input["image"]), dim=0))
            if isinstance(output, (list, tuple)):
                out_labeled = [o[:n_labeled] for o in output]
                out_unlabeled = [o[n_labeled:] for o in output]
            else:
                out_labeled, out_unlabeled = output[:n_labeled], output[n_labeled:]
            sup = self.loss(out_labeled, target)
            terms = self.compute_unlabeled_losses(out_unlabeled, student_input, unlabeled, out_labeled, target)
            ramp = self.unsupervised_weight_factor()
            weighted = {name: ramp * self.loss_weights.get(name, 1.0) * value for name, value in terms.items()
                        if name not in self.diagnostic_names}
            total = self.supervised_weight * sup
            for value in weighted.values():
                total = total + value
        if self.log_gradient_norms and self._gradient_norms_epoch != self.current_epoch:
            self._gradient_norms_epoch = self.current_epoch
            self._gradient_norms = relative_gradient_norms(weighted, self.supervised_weight * sup,
                                                           self.monitored_parameters())

        if not torch.isfinite(total):
            return self._skip_nonfinite_step(sup, terms)
        self._consecutive_nonfinite = 0
        self._backward_and_step(total)
        self.teacher.update(self.network)
        self.after_optimizer_step({"teacher_out": teacher_out, "student_input": student_input,
                                   "unlabeled": unlabeled})
        result = {"loss": total.detach().cpu().numpy(), "sup": sup.detach().cpu().numpy(),
                  "skipped_steps": np.array(0.0)}
        for name, value in terms.items():
            result[name] = value.detach().float().cpu().numpy()
        return result

    def _skip_nonfinite_step(self, sup: torch.Tensor, terms: Dict[str, torch.Tensor]) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        self.num_nonfinite_steps += 1
        self._consecutive_nonfinite += 1
        bad = [n for n, v in [("sup", sup)] + list(terms.items())
               if n not in self.diagnostic_names and not torch.isfinite(v).all()]
        self.print_to_log_file(f"Non-finite loss in {bad}: step skipped ({self.num_nonfinite_steps} so far)")
        if self._consecutive_nonfinite >= self.max_consecutive_nonfinite_steps:
            raise RuntimeError(
                f"{self._consecutive_nonfinite} consecutive training steps had a non-finite loss ({bad}). "
                f"Training stopped; the last checkpoint is intact. Check the input data (NaNs in images?), "
                f"lower initial_lr or the unsupervised loss weights, then resume with --c.")
        nan = np.array(np.nan)
        return {"loss": nan, "sup": nan, "skipped_steps": np.array(1.0), **{n: nan for n in terms}}













