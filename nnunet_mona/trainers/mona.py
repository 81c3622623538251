"""MONA fine-tuning (anatomical contrastive reconstruction, method_spec A.3 / A.7) inside nnU-Net v2.

One iteration (the base class runs steps 1, 4, 6 and the optimizer step):
  1. the EMA teacher predicts [labeled ; weak unlabeled] (one forward; its decoder features are
     hooked and projected by the teacher head, an EMA copy of the student head);
  2. mixing (``mix_mode``: cutmix / cutout / classmix, partner permutation) applied alike to the
     strong images, pseudo-labels, confidences, teacher probabilities and the valid mask, then the
     GPU strong photometric view; the equivariance warp T of that view is appended to the batch;
  3. ONE student forward on [labeled ; mixed strong ; T(first eqv_batch_fraction of mixed strong)]
     (hooks collect its decoder features), so AMP / compile / DDP see a single forward and backward;
  4. losses: nnU-Net's DS Dice+CE on the labeled part, and
       unsup    confidence-weighted pseudo-label CE (ReCo style, threshold 0.97),
       contrast tail-aware anatomical InfoNCE on the multi-scale representation (1/4 resolution),
                per-class memory banks of teacher keys, reliable/unreliable split by entropy,
       nn       student image embedding pulled to the teacher's k nearest neighbours in a FIFO queue,
       eqv      KL between f(T x) and T(f(x)) (detached) on the confident foreground;
  5. after the step: EMA of the teacher head, enqueue bank keys and queue embeddings.

Design choices (paper-intended versions, method_spec E.1): negatives are other-class pixels, the nn
loss has a student gradient. Deviations from the official code for cost: the teacher keys /
probabilities come from the *weak* view (the one forward that also gives the pseudo-labels),
mixed with the same mask at the representation resolution, instead of a second teacher forward on
the strong view; the equivariance source is the student's own strong view (no second strong view).
2D configurations only (``initialize`` raises for 3d).
"""
from contextlib import nullcontext
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mona.augment.intensity import StrongPhotometricAugment
from nnunet_mona.augment.mixing import apply_mix
from nnunet_mona.augment.unlabeled_mixing import mix_unlabeled_batch
from nnunet_mona.augment.warps import RandomWarp, warp
from nnunet_mona.losses.anatomical_contrast import anatomical_contrast_loss
from nnunet_mona.losses.consistency import confident_pseudo_label_losses
from nnunet_mona.losses.entropy_split import alpha_schedule, reliability_masks
from nnunet_mona.losses.equivariance import equivariance_loss
from nnunet_mona.losses.nearest_neighbour import nearest_neighbour_loss
from nnunet_mona.losses.pseudo_label_ce import confidence_weighted_pseudo_label_ce
from nnunet_mona.modules.ema_teacher import EMATeacher, unwrap_network
from nnunet_mona.modules.feature_hooks import (DecoderFeatureCollector, decoder_level_channels,
                                               decoder_level_strides)
from nnunet_mona.modules.memory_bank import ClassMemoryBank, FeatureQueue
from nnunet_mona.modules.projection_heads import (MultiScaleRepresentationHead, PixelProjectionHead,
                                                  ProjectionMLP)
from nnunet_mona.trainers.semi_supervised_base import nnUNetTrainerSemiSupervised
from nnunet_mona.trainers.term_monitor import chance_value


def resize_nearest(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, *S) or (B, C, *S) -> same with spatial size ``size`` (nearest; dtype kept, bool too)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-len(size):]) == size:
        return x
    squeeze = x.ndim == len(size) + 1
    y = x.unsqueeze(1) if squeeze else x
    out = F.interpolate(y.float(), size=size, mode="nearest")
    out = out > 0.5 if x.dtype == torch.bool else out.to(x.dtype)
    return out.squeeze(1) if squeeze else out


class nnUNetTrainerMONA(nnUNetTrainerSemiSupervised):
    """MONA fine-tuning: unsup + 0.01 contrast + nn on top of nnU-Net's supervised loss (the equivariance term is
    off by default: ``_equivariance`` adds it). By default the first half of the epochs trains nnU-Net's supervised
    step alone, as for Mean Teacher; ``_randomStart`` has no warm-up."""

    # the first half supervised, then MONA from a teacher copied from the student (trainers.supervised_warmup)
    supervised_warmup_fraction = 0.5

    checkpointed_modules = {"mona": "mona_state"}  # teacher head, class banks, nn queue: resumed with --c

    # ---- unlabeled view
    mix_mode: str = "cutmix"  # 'cutmix' | 'cutout' | 'classmix' | 'none'
    mix_area_fraction: float = 0.5  # MONA: a box of half the patch
    # second photometric pipeline on the GPU after the loader's strong view (MONA's code does both). Off by
    # default: two strong pipelines in a row may wash out thin structures, and Mean Teacher's recipe has one
    extra_photometric: bool = False
    # B labeled (plain nnU-Net's supervised signal per step) + B/2 unlabeled patches
    labeled_batch_fraction = 1.0
    unlabeled_batch_fraction = 0.5
    # ---- unsup. 'masked': CE on the pixels whose teacher confidence >= unsup_threshold plus a batch
    # soft Dice on them (as nnUNetTrainerMeanTeacher). 'image_weighted': MONA's ReCo-style CE on every
    # pixel, weighted per image by its confident fraction (spec A.3.3(2)); it also trains unconfident pixels
    # towards the early teacher's argmax, mostly background
    unsup_mode: str = "masked"
    unsup_threshold: float = 0.9
    # ---- representation head (spec E.4): bottleneck + all decoder stages fused at 1/stride
    representation_stride: int = 4
    head_proj_channels: int = 64
    head_out_channels: int = 128
    head_nonlinear: bool = True  # paper: non-linear projectors (code: linear)
    use_predictor: bool = True  # student-only predictor on top of the head (MONA q_representation)
    # centre and scale each embedding channel over the batch (projection_heads.standardize_over_batch): without
    # it the contrast hardly moves from chance (tests/test_collapse.py)
    head_standardize_output: bool = True
    # ---- anatomical contrast (spec A.3.3(4), E.11)
    use_contrast: bool = True
    contrast_sampler: str = "uniform"  # 'uniform' (NS) | 'stratified' (SG) | 'antithetic' (SAG)
    contrast_temperature: float = 0.5
    contrast_num_queries: int = 256
    contrast_num_negatives: int = 512
    contrast_positive_threshold: float = 0.3
    contrast_negative_threshold: float = 0.97
    contrast_alpha0: float = 20.0
    contrast_keys_per_class: int = 256  # keys enqueued per class and step
    # per-class FIFO banks: MONA keeps 30000 (bg 50000) full-resolution keys; at 1/4 resolution and
    # 256 keys/class/step this holds the last 16 (bg 32) steps, fp16 on the device
    bank_capacity: int = 4096
    bank_background_capacity: int = 8192
    bank_fp16: bool = True
    # ---- nearest neighbours (spec A.3.3(5), E.12): pooled embeddings, FIFO queue of teacher embeddings
    use_nn: bool = True
    nn_queue_size: int = 36
    nn_k: int = 5
    # the nn pull is trivially met by a constant representation; with its gradient reaching the decoder
    # (weight 1) the representation collapsed on ACDC (contrast stuck at ln(1 + negatives), nn at 0).
    # False: the nn term trains its own predictor only (on detached head outputs)
    nn_gradient_to_network: bool = False
    # the nn term has its own global predictor (MONA: a separate instance-level branch). Sharing the
    # pixel predictor with the contrast let the nn pull undo the contrast (tests/test_collapse.py)
    nn_own_predictor: bool = True
    # ---- equivariance (spec A.3.3(6)). Off by default, a departure from MONA: its KL pulls the decoder harder
    # than the supervised loss even at weight 0.1 (nnUNetv2_mona_gradient_shares), and MONA trained without it
    # scored higher at the largest budget measured (docs/results.md). nnUNetTrainerMONA_equivariance keeps it
    use_equivariance: bool = False
    eqv_warp_kind: str = "tps"  # RandomWarp kind: 'tps' (MONA) | 'affine' | 'smooth'
    eqv_confidence_threshold: float = 0.7
    # share of the unlabeled batch that also goes through the student warped (MONA: all images, l and u).
    # The warped copies are extra student forward/backward work: with B labeled + B/2 unlabeled patches, 0.5
    # makes the student process 1.75 x the plans' batch per iteration (the teacher: 1.5 x, forward only)
    eqv_batch_fraction: float = 0.5
    # ---- weights (spec A.4b). contrast stays 0.01. Its value depends only on cosines (same tau and
    # query/negative budget as MONA: ln(1 + negatives) at init); its gradient scales with 1/|embedding|. Our
    # predictor's output has a smaller per-pixel norm than the raw decoder maps MONA's linear FPN head
    # concatenates, so per unit weight our head passes a larger, not smaller, gradient than MONA's: no larger
    # weight is implied; it stays a class attribute for tuning.
    # eqv 0.1, not the official code's 1 (a departure): at weight 1 the equivariance KL pulls the decoder harder
    # than the supervised loss, which then stalls (nnUNetTrainerMONA_paperRecipe keeps 1)
    loss_weights = {"unsup": 1.0, "unsup_dice": 1.0, "contrast": 0.01, "nn": 1.0, "eqv": 0.1}
    diagnostic_names = ("confident_fraction",)

    @property
    def loss_term_names(self) -> tuple:
        """The terms this configuration computes, from its switches (a variant never lists them by hand)."""
        names = ["unsup"] + (["unsup_dice"] if self.unsup_mode == "masked" else [])
        names += [name for name, on in (("contrast", self.use_contrast), ("nn", self.use_nn),
                                        ("eqv", self.use_equivariance)) if on]
        return tuple(names) + ("confident_fraction",)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.student_features: Optional[DecoderFeatureCollector] = None
        self.teacher_features: Optional[DecoderFeatureCollector] = None
        self.mona_state: Optional[nn.ModuleDict] = None  # teacher head, class banks, nn queue
        self.photometric = StrongPhotometricAugment()
        self.equivariance_warp = RandomWarp(kind=self.eqv_warp_kind)
        self._labeled_images = None
        self._teacher_step = None  # teacher representation / probabilities of the current step
        self._pending = {}  # what after_optimizer_step enqueues

    collapse_zero_terms = ("nn",)

    def chance_values(self) -> Dict[str, float]:
        return {"contrast": chance_value(self.contrast_num_negatives)} if self.use_contrast else {}

    @property
    def needs_features(self) -> bool:
        return self.use_contrast or self.use_nn

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        if self.was_initialized:
            return
        if len(self.configuration_manager.patch_size) != 2:
            raise RuntimeError(f"{self.__class__.__name__} is 2D-only (MONA is a slice-wise method; its mixing, "
                               f"warps and contrastive budget are set for 2D patches). Train the '2d' "
                               f"configuration instead of '{self.configuration_name}'.")
        super().initialize()  # network, configure_optimizers (-> build_auxiliary_modules), teacher
        self.teacher_features = DecoderFeatureCollector(self.teacher.model)
        head = self.auxiliary_modules["head"]
        teacher_head = EMATeacher(self._new_head(), head, decay=self.ema_decay, warmup=self.ema_warmup)
        num_classes = self.label_manager.num_segmentation_heads
        self.mona_state = nn.ModuleDict({
            "teacher_head": teacher_head,
            "class_bank": ClassMemoryBank(num_classes, self.head_out_channels, self.bank_capacity,
                                          self.bank_background_capacity, store_fp16=self.bank_fp16),
            "nn_queue": FeatureQueue(self.head_out_channels, self.nn_queue_size, store_fp16=False),
        }).to(self.device)

    def _new_head(self) -> MultiScaleRepresentationHead:
        net = unwrap_network(self.network)
        channels = decoder_level_channels(net)
        strides = decoder_level_strides(net, self.configuration_manager.pool_op_kernel_sizes)
        # the finest level whose stride does not exceed representation_stride (1/4 of the patch)
        target = np.log2(self.representation_stride)
        errors = [abs(np.log2(min(s)) - target) for s in strides]
        reference = int(len(errors) - 1 - np.argmin(errors[::-1]))
        return MultiScaleRepresentationHead(channels, self.head_proj_channels, self.head_out_channels,
                                            reference_index=reference, fusion="sum",
                                            nonlinear=self.head_nonlinear,
                                            standardize_output=self.head_standardize_output).to(self.device)

    def build_auxiliary_modules(self) -> Optional[nn.ModuleDict]:
        # runs inside nnUNetTrainer.initialize after torch.compile and before DDP: hooks go on the
        # unwrapped module and still fire through the wrappers
        self.student_features = DecoderFeatureCollector(self.network)
        modules = {"head": self._new_head()}
        c = self.head_out_channels
        if self.use_predictor:
            modules["predictor"] = PixelProjectionHead(c, c, c, nonlinear=self.head_nonlinear)
        if self.use_nn and self.nn_own_predictor:
            modules["nn_predictor"] = ProjectionMLP(c, c, c, nonlinear=self.head_nonlinear)
        return nn.ModuleDict(modules)

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: dict) -> dict:
        self._labeled_images = batch["data"].to(self.device, non_blocking=True)
        try:
            with self.student_features.collecting() if self.needs_features else nullcontext():
                return super().train_step(batch)
        finally:
            self._labeled_images, self._teacher_step, self._pending = None, None, {}

    @torch.no_grad()
    def teacher_predict(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Base outputs for the unlabeled ``images``; with features needed, the teacher runs on
        [labeled ; images] and keeps its representation (N_l + B_u, D, *S_r) and labeled probs."""
        labeled = self._labeled_images
        if labeled is None or not self.needs_features:
            return super().teacher_predict(images)
        n_l = labeled.shape[0]
        with self.teacher_features.collecting():
            out = super().teacher_predict(torch.cat((labeled, images), 0))
            maps = self.teacher_features.pop()
        with self.autocast_context():
            representation = self.mona_state["teacher_head"](maps)
        self._teacher_step = {"representation": representation.float(), "probs_labeled": out["probs"][:n_l]}
        return {k: v[n_l:] for k, v in out.items()}

    def make_student_unlabeled_input(self, unlabeled, teacher_out):
        """Mixed + photometric strong view (B_u, C, *P) [+ its warp T, appended: 'image' is then
        (2 B_u, C, *P)]; pseudo-labels (-1 = ignore), confidences, probs and valid mask mixed alike."""
        mixed = mix_unlabeled_batch(self.mix_mode, unlabeled["data_strong"], teacher_out["pseudo_label"],
                                    teacher_out["confidence"], teacher_out["probs"], unlabeled["valid_mask"][:, 0],
                                    self.mix_area_fraction)
        image, labels, conf, probs, valid = (mixed[k] for k in ("image", "pseudo_label", "confidence", "probs",
                                                                "valid"))
        mix_mask, partner = mixed["mix_mask"], mixed["partner"]
        b, spatial, device = image.shape[0], tuple(image.shape[2:]), image.device
        if self.extra_photometric:
            image = self.photometric(image)
        student_input = {"image": image, "probs": probs, "confidence": conf, "pseudo_label": labels,
                         "valid": valid, "mix_mask": mix_mask, "partner": partner, "num_unlabeled": b}
        if self.use_equivariance:
            n_w = self.num_warped(b)
            grid, warp_valid = self.equivariance_warp(n_w, spatial, device=device)
            student_input.update(warp_grid=grid, warp_valid=warp_valid, num_warped=n_w,
                                 image=torch.cat((image, warp(image[:n_w], grid)), 0))
        return student_input

    def num_warped(self, num_unlabeled: int) -> int:
        """How many unlabeled images get an equivariance copy (>= 1): the first ones, a random subset
        since the unlabeled patches are drawn at random."""
        return min(num_unlabeled, max(1, int(round(num_unlabeled * self.eqv_batch_fraction))))

    # ------------------------------------------------------------------ losses
    def compute_unlabeled_losses(self, student_outputs_unlabeled, student_input, unlabeled, labeled_outputs,
                                 labeled_target) -> Dict[str, torch.Tensor]:
        logits = student_outputs_unlabeled[0] if isinstance(student_outputs_unlabeled, (list, tuple)) \
            else student_outputs_unlabeled
        n_u = student_input["num_unlabeled"]
        logits_u = logits[:n_u]
        valid = student_input["valid"]
        threshold = self.pseudo_label_threshold(student_input["pseudo_label"], self.unsup_threshold)  # float or map
        confident = (student_input["confidence"] >= threshold) & valid
        terms = {"confident_fraction": (confident.sum() / valid.sum().clamp_min(1)).detach().float()}
        terms.update(self._pseudo_label_losses(logits_u, student_input, valid, threshold))
        if self.needs_features:
            n_l = (labeled_outputs[0] if isinstance(labeled_outputs, (list, tuple)) else labeled_outputs).shape[0]
            maps = [m[:n_l + n_u] for m in self.student_features.pop()]  # drop the warped batch
            head_out = self.auxiliary_modules["head"](maps)
            embedding = self._predict(head_out)
            teacher_embedding = self._mixed_teacher_representation(student_input, n_l)
            if self.use_contrast:
                terms["contrast"] = self._contrast_loss(embedding, teacher_embedding, logits_u, student_input,
                                                        labeled_target, n_l)
            if self.use_nn:
                student_vec = self._nn_embedding(head_out[n_l:], embedding[n_l:])
                teacher_vec = teacher_embedding[n_l:].mean(tuple(range(2, teacher_embedding.ndim)))
                terms["nn"] = nearest_neighbour_loss(student_vec, teacher_vec,
                                                     self.mona_state["nn_queue"].features, self.nn_k)
                self._pending["nn_keys"] = teacher_vec.detach()
        if self.use_equivariance:
            n_w = student_input["num_warped"]
            terms["eqv"] = self._equivariance_loss(logits_u[:n_w], logits[n_u:n_u + n_w], student_input)
        return terms

    def _nn_embedding(self, head_out: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """(B_u, D) student image embeddings for the nn pull, from the head output (B_u, D, *S_r) and the
        pixel embedding (B_u, D, *S_r) that the contrast uses."""
        spatial = tuple(range(2, head_out.ndim))
        source = head_out if self.nn_gradient_to_network else head_out.detach()
        if self.nn_own_predictor:  # pool, then a global predictor the contrast never sees
            return self.auxiliary_modules["nn_predictor"](source.float().mean(spatial))
        shared = embedding if self.nn_gradient_to_network else self._predict(source)
        return shared.float().mean(spatial)

    def _predict(self, head_out: torch.Tensor) -> torch.Tensor:
        return self.auxiliary_modules["predictor"](head_out) if self.use_predictor else head_out

    def _pseudo_label_losses(self, logits_u, student_input, valid, threshold) -> Dict[str, torch.Tensor]:
        """'unsup' (and 'unsup_dice' in the masked mode) on the mixed unlabeled logits (B_u, K, *P); ``threshold``:
        float or (B_u, *P) map (``pseudo_label_threshold``)."""
        labels = student_input["pseudo_label"]
        if self.unsup_mode == "masked":
            return confident_pseudo_label_losses(logits_u, labels, student_input["confidence"], valid, threshold)
        if self.unsup_mode == "image_weighted":  # a per-image weight: the fixed threshold only
            return {"unsup": confidence_weighted_pseudo_label_ce(logits_u, labels, student_input["confidence"],
                                                                 valid & (labels >= 0), self.unsup_threshold)}
        raise ValueError(f"unknown unsup_mode {self.unsup_mode!r}: use 'masked' or 'image_weighted'")

    def _mixed_teacher_representation(self, student_input, n_l: int) -> torch.Tensor:
        """Teacher representation (N_l + B_u, D, *S_r), the unlabeled part mixed like the student input
        (mix mask resized nearest; cut-out pixels are ignored through their labels)."""
        rep = self._teacher_step["representation"]
        mask = student_input["mix_mask"]
        if mask is None or self.mix_mode == "cutout":
            return rep
        rep_l, rep_u = rep[:n_l], rep[n_l:]
        mixed = apply_mix(rep_u, None, None, resize_nearest(mask, rep.shape[2:]), student_input["partner"])[0]
        return torch.cat((rep_l, mixed), 0)

    def _contrast_targets(self, size, student_input, labeled_target):
        """At the representation size ``size``: ground truth of the labeled part (N_l, *S_r) with
        ignore -> -1, the mixed pseudo-labels (B_u, *S_r), and the teacher probabilities of
        [labeled ; unlabeled] (N_l + B_u, K, *S_r)."""
        gt = labeled_target[0] if isinstance(labeled_target, (list, tuple)) else labeled_target
        gt = resize_nearest(gt[:, 0].long(), size)
        if self.label_manager.has_ignore_label:
            gt = torch.where(gt == self.label_manager.ignore_label, torch.full_like(gt, -1), gt)
        pseudo = resize_nearest(student_input["pseudo_label"], size)
        teacher_probs = torch.cat((resize_nearest(self._teacher_step["probs_labeled"], size),
                                   resize_nearest(student_input["probs"], size)), 0)
        return gt, pseudo, teacher_probs

    def _contrast_loss(self, embedding, teacher_embedding, logits_u, student_input, labeled_target, n_l):
        size = embedding.shape[2:]
        gt, pseudo, teacher_probs = self._contrast_targets(size, student_input, labeled_target)
        # reliable / unreliable unlabeled pixels by the entropy of the student's prediction (MONA code)
        student_probs = resize_nearest(torch.softmax(logits_u.detach().float(), 1), size)
        alpha = alpha_schedule(self.semi_supervised_progress(), self.contrast_alpha0)
        reliable_u, unreliable_u = reliability_masks(student_probs, pseudo >= 0, alpha)
        labeled_valid = gt >= 0  # labeled pixels: reliable = unreliable = all valid (MONA)
        loss, keys, key_labels = anatomical_contrast_loss(
            embedding, teacher_embedding, torch.cat((gt, pseudo), 0), teacher_probs,
            torch.cat((labeled_valid, reliable_u), 0), torch.cat((labeled_valid, unreliable_u), 0),
            memory_bank=self.mona_state["class_bank"], num_queries=self.contrast_num_queries,
            num_negatives=self.contrast_num_negatives, temperature=self.contrast_temperature,
            positive_threshold=self.contrast_positive_threshold,
            negative_threshold=self.contrast_negative_threshold, sampler=self.contrast_sampler,
            max_keys_per_class=self.contrast_keys_per_class)
        self._pending["class_keys"] = (keys, key_labels)
        return loss

    def _equivariance_loss(self, logits_u, logits_warped, student_input) -> torch.Tensor:
        """``logits_u`` (N_w, K, *P): the student on the first N_w strong images; ``logits_warped``
        (N_w, K, *P): the student on their warps."""
        grid, n_w = student_input["warp_grid"], logits_u.shape[0]
        reference = warp(logits_u.detach().float(), grid)  # T(f(x)), detached
        foreground = (student_input["pseudo_label"][:n_w] > 0) & student_input["valid"][:n_w] & \
            (student_input["confidence"][:n_w] >= self.eqv_confidence_threshold)
        mask = warp(foreground.float(), grid) * student_input["warp_valid"].float()
        return equivariance_loss(logits_warped, reference, mask)

    def after_optimizer_step(self, step_state: dict) -> None:
        if self.mona_state is None:
            return
        if self.needs_features:
            self.mona_state["teacher_head"].update(self.auxiliary_modules["head"])
        if "class_keys" in self._pending:
            self.mona_state["class_bank"].enqueue(*self.keys_from_all_ranks(*self._pending["class_keys"]))
        if "nn_keys" in self._pending:  # after the loss: a teacher embedding is not its own neighbour
            self.mona_state["nn_queue"].enqueue(self.keys_from_all_ranks(self._pending["nn_keys"]))
        self._pending = {}

