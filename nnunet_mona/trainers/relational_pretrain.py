"""Relational instance-discrimination pre-training (MONA stage 1, ACTION stages i-ii) inside nnU-Net v2.

One implementation for both methods (method_spec A.2, B.1-B.2, E.13); the variants only set class
attributes. Per iteration, on top of the base class's batch (labeled patches; a weak and a
strong view of the same unlabeled patch):

* supervised: nnU-Net's deep-supervision Dice+CE on the labeled patches, times ``supervised_weight``
  (MONA 1.0, ACTION stage ii 0.5, ACTION stage i 0; applied by the base class, 'sup' is logged unweighted).
* ``global_isd``: student query q = predictor(projector(GAP(bottleneck))), bottleneck =
  ``encoder.stages[-1]`` on the strong view; teacher key k = EMA projector(GAP(teacher bottleneck))
  on the weak view. Loss KL(softmax(cos(k, Q)/tau_t) || softmax(cos(q, Q)/tau_s)) over a FIFO queue
  Q of past teacher keys (``relational_kl_loss``): the teacher's similarity distribution over the
  anchors is the soft target ("soft negative labels").
* ``local_isd``: the same on one vector per window (window 1/4, stride 1/8 of the patch, each
  pooled to 8x8, method_spec E.2) of the full-resolution logits (``local_source='logits'``, as
  the official code) or of the last decoder stage (``'decoder'``); a 1x1-conv projector (C -> 2C
  -> C) and a 1x1-conv predictor per window; a second queue of teacher window embeddings.

Design choices (vs the official MONA / ACTION code):
* the teacher side is detached: the teacher heads are EMA copies of the student projectors
  (decay ``ema_decay``, updated after each optimizer step), never trained by SGD. The official
  heads are in the optimizer and the KL target is not detached, so gradient reaches them
  (method_spec A.2 oddity (i)); that is a bug we do not copy. ACTION's code does not EMA its
  heads at all; we do (MONA, paper intent). The predictor exists on the student side only.
* the losses use the unlabeled rows (the weak/strong pair); the queues receive the teacher keys
  of the labeled images too (``enqueue_labeled``, teacher run once on [labeled ; weak]): the
  official queue also mixes labeled and unlabeled images, and more anchors per step refresh it.
* queue size K = max(``queue_size`` (36), ``queue_min_batches`` x keys per step); the local queue
  holds the windows of the same K images (K x windows per image). Keys are enqueued after the
  step, so the current keys are never their own anchors. Empty queue (first step): loss 0.
* local ISD, intended version: one C*8*8 vector per window (not the code's 49-value chunks).
* projectors are non-linear by default (paper; code: linear) -> ``head_nonlinear``.
* no ramp-up, no EMA warm-up (official: none); the optimizer is nnU-Net's (SGD 0.01, momentum
  0.99, Nesterov) rather than the official momentum 0.9 without Nesterov.
* ``train_decoder = False`` (ACTION stage i) sets requires_grad False on the decoder's own
  parameters (the decoder's reference to the encoder is excluded) before the optimizer is built.

Recipes (``-pretrained_weights`` transfers the student U-Net from 'network_weights' except the
1x1 seg layers, which nnU-Net's ``load_pretrained_weights`` never transfers; heads, teacher heads
and queues stay in ``checkpoint['semi_supervised']`` and are used by ``--c`` only)::

    # MONA: relational pre-training, then anatomical contrastive fine-tuning
    nnUNetv2_train D 2d 0 -tr nnUNetTrainerMONAPretrain
    nnUNetv2_train D 2d 0 -tr nnUNetTrainerMONA -pretrained_weights \\
        $nnUNet_results/DatasetD_X/nnUNetTrainerMONAPretrain__nnUNetPlans__2d/fold_0/checkpoint_final.pth
    # (nnUNetTrainerMONA without -pretrained_weights is MONA without pre-training)

    # ACTION: stage i (global only, decoder frozen), then stage ii from stage i's student
    nnUNetv2_train D 2d 0 -tr nnUNetTrainerACTIONPretrainEncoder
    nnUNetv2_train D 2d 0 -tr nnUNetTrainerACTIONPretrain -pretrained_weights \\
        $nnUNet_results/DatasetD_X/nnUNetTrainerACTIONPretrainEncoder__nnUNetPlans__2d/fold_0/checkpoint_final.pth
    # then fine-tune from stage ii's checkpoint_final.pth the same way (-pretrained_weights)

The fine-tuning trainer's teacher starts as a copy of the loaded student (base class,
``on_train_start``); stage ii's heads and queues start fresh (the official ACTION resume also
reloads the EMA network; ours restarts the teacher from the stage-i student).
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from nnunet_mona.losses.instance_discrimination import relational_kl_loss, window_embeddings
from nnunet_mona.modules.ema_teacher import EMATeacher, unwrap_network
from nnunet_mona.modules.feature_hooks import DecoderFeatureCollector, decoder_level_channels
from nnunet_mona.modules.memory_bank import FeatureQueue
from nnunet_mona.modules.projection_heads import PixelProjectionHead, ProjectionMLP
from nnunet_mona.trainers.semi_supervised_base import nnUNetTrainerSemiSupervised


class WindowProjector(nn.Module):
    """Per-window projector: (N, C * p^d) flattened windows -> (N, out * p^d), 1x1 convs on (N, C, p, ...)."""

    def __init__(self, channels: int, hidden: int, out_channels: int, pool: int, spatial_dims: int,
                 nonlinear: bool = True):
        super().__init__()
        self.channels, self.pool, self.spatial_dims = channels, pool, spatial_dims
        self.head = PixelProjectionHead(channels, hidden, out_channels, nonlinear=nonlinear,
                                        spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # window_embeddings flattens channel-major, so this reshape restores (N, C, p, p[, p]) exactly
        maps = x.reshape(x.shape[0], self.channels, *([self.pool] * self.spatial_dims))
        return self.head(maps).flatten(1)


class nnUNetTrainerMONAPretrain(nnUNetTrainerSemiSupervised):
    """MONA stage 1: 1.0 x Dice+CE + global ISD + local ISD (method_spec A.2, intended version)."""

    checkpointed_modules = {"relational": "relational_state"}  # teacher heads (EMA) and queues

    supervised_weight = 1.0
    train_decoder: bool = True
    use_global: bool = True
    use_local: bool = True
    loss_weights = {"global_isd": 1.0, "local_isd": 1.0}
    loss_term_names = ("global_isd", "local_isd")
    unsupervised_rampup_fraction = 0.0  # self-supervised terms, no pseudo-labels: no ramp-up
    ema_decay = 0.99
    ema_warmup = False  # official: constant 0.99 from a teacher = student start
    # relational KL (paper / ACTION launch script; MONA code default 0.1 / 0.1)
    tau_s: float = 0.1
    tau_t: float = 0.01
    # queues: K = max(queue_size, queue_min_batches * keys per step)
    queue_size: int = 36
    queue_min_batches: int = 4
    enqueue_labeled: bool = True
    # global heads: GAP(bottleneck) -> projector -> [student] predictor
    global_hidden_dim: int = 512
    global_embedding_dim: int = 512
    head_nonlinear: bool = True
    # local heads on windows of 'logits' (official) or 'decoder' (decoder.stages[-1] output)
    local_source: str = "logits"
    local_window_fraction: float = 0.25
    local_stride_fraction: float = 0.125
    local_pool: int = 8

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.student_features: Optional[DecoderFeatureCollector] = None
        self.teacher_features: Optional[DecoderFeatureCollector] = None
        self.relational_state: Optional[nn.ModuleDict] = None  # teacher heads (EMA) and queues
        self._labeled_images: Optional[torch.Tensor] = None
        self._teacher_step: Optional[dict] = None
        self._pending: dict = {}

    def uses(self, term: str) -> bool:
        flag = {"global_isd": self.use_global, "local_isd": self.use_local}[term]
        return flag and self.loss_weights.get(term, 1.0) > 0

    # ------------------------------------------------------------------ geometry and heads
    def local_window(self) -> Tuple[List[int], List[int], int, int]:
        """(window, stride, pool, windows per image) from the patch size (MONA: 64/32 px on 256^2)."""
        patch = [int(p) for p in self.configuration_manager.patch_size]
        window = [max(1, int(round(p * self.local_window_fraction))) for p in patch]
        stride = [max(1, int(round(p * self.local_stride_fraction))) for p in patch]
        pool = min([self.local_pool] + window)
        n = int(np.prod([(p - w) // s + 1 for p, w, s in zip(patch, window, stride)]))
        return window, stride, pool, n

    def _local_channels(self) -> int:
        if self.local_source == "logits":
            return self.label_manager.num_segmentation_heads
        if self.local_source == "decoder":
            return decoder_level_channels(unwrap_network(self.network))[-1]
        raise ValueError(f"local_source must be 'logits' or 'decoder', got {self.local_source!r}")

    def _new_global_projector(self) -> ProjectionMLP:
        bottleneck = decoder_level_channels(unwrap_network(self.network))[0]
        return ProjectionMLP(bottleneck, self.global_hidden_dim, self.global_embedding_dim,
                             nonlinear=self.head_nonlinear)

    def _new_local_projector(self) -> WindowProjector:
        c, pool = self._local_channels(), self.local_window()[2]
        return WindowProjector(c, 2 * c, c, pool, len(self.configuration_manager.patch_size), self.head_nonlinear)

    def _freeze_decoder(self) -> None:
        """requires_grad False on the decoder's own parameters (UNetDecoder also holds the encoder)."""
        net = unwrap_network(self.network)
        encoder_params = {id(p) for p in net.encoder.parameters()}
        for p in net.decoder.parameters():
            if id(p) not in encoder_params:
                p.requires_grad_(False)

    # ------------------------------------------------------------------ set-up
    def build_auxiliary_modules(self) -> Optional[nn.ModuleDict]:
        # called by configure_optimizers inside nnUNetTrainer.initialize, before DDP wraps the network:
        # freezing here keeps DDP from expecting decoder gradients
        if not self.train_decoder:
            self._freeze_decoder()
        decoder_stages = [-1] if self.uses("local_isd") and self.local_source == "decoder" else []
        self.student_features = DecoderFeatureCollector(self.network, decoder_stages=decoder_stages)
        modules = {}
        if self.uses("global_isd"):
            d = self.global_embedding_dim
            modules["global_projector"] = self._new_global_projector()
            modules["global_predictor"] = ProjectionMLP(d, d, d, nonlinear=self.head_nonlinear)
        if self.uses("local_isd"):
            c = self._local_channels()
            pool, dims = self.local_window()[2], len(self.configuration_manager.patch_size)
            modules["local_projector"] = self._new_local_projector()
            modules["local_predictor"] = WindowProjector(c, c, c, pool, dims, self.head_nonlinear)
        return nn.ModuleDict(modules) if modules else None

    def keys_per_step(self) -> int:
        return self.unlabeled_batch_size + (self.batch_size if self.enqueue_labeled else 0)

    def initialize(self):
        if self.was_initialized:
            return
        super().initialize()  # network, configure_optimizers (-> build_auxiliary_modules), teacher
        decoder_stages = [-1] if self.uses("local_isd") and self.local_source == "decoder" else []
        self.teacher_features = DecoderFeatureCollector(self.teacher.model, decoder_stages=decoder_stages)
        capacity = max(self.queue_size, self.queue_min_batches * self.keys_per_step())
        state = {}
        if self.uses("global_isd"):
            state["global_teacher_projector"] = EMATeacher(self._new_global_projector().to(self.device),
                                                           self.auxiliary_modules["global_projector"],
                                                           decay=self.ema_decay, warmup=self.ema_warmup)
            state["global_queue"] = FeatureQueue(self.global_embedding_dim, capacity)
        if self.uses("local_isd"):
            _, _, pool, n_windows = self.local_window()
            dim = self._local_channels() * pool ** len(self.configuration_manager.patch_size)
            state["local_teacher_projector"] = EMATeacher(self._new_local_projector().to(self.device),
                                                          self.auxiliary_modules["local_projector"],
                                                          decay=self.ema_decay, warmup=self.ema_warmup)
            state["local_queue"] = FeatureQueue(dim, capacity * n_windows)
        self.relational_state = nn.ModuleDict(state).to(self.device)
        local = f" ({self.local_window()[3]} windows each for the local term)" if self.uses("local_isd") else ""
        self.print_to_log_file(f"Relational pre-training: queue {capacity} images{local}, "
                               f"supervised weight {self.supervised_weight}, train_decoder {self.train_decoder}")

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: dict) -> dict:
        self._labeled_images = batch["data"].to(self.device, non_blocking=True)
        self._teacher_step, self._pending = {}, {}
        try:
            with self.student_features.collecting():
                return super().train_step(batch)
        finally:
            self._labeled_images, self._teacher_step, self._pending = None, None, {}

    def _local_windows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *P) -> (B * nW, C * pool^d) fp32 window vectors, row = b * nW + w."""
        window, stride, pool, _ = self.local_window()
        return window_embeddings(x.float(), window, stride, pool)

    def _local_source_map(self, logits: torch.Tensor, maps: List[torch.Tensor]) -> torch.Tensor:
        return logits if self.local_source == "logits" else maps[-1]

    @torch.no_grad()
    def teacher_predict(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Base outputs for the unlabeled ``images``; inside train_step the teacher runs once on
        [labeled ; images] and its keys are kept: 'global' (N_l + B_u, D), 'local' ((N_l + B_u) * nW, C p^d)."""
        labeled = self._labeled_images
        if labeled is None or self._teacher_step is None:
            return super().teacher_predict(images)
        n_l = labeled.shape[0]
        with self.teacher_features.collecting():
            out = super().teacher_predict(torch.cat((labeled, images), 0))
            maps = self.teacher_features.pop()
        if self.uses("global_isd"):
            pooled = maps[0].float().mean(tuple(range(2, maps[0].dim())))
            self._teacher_step["global"] = self.relational_state["global_teacher_projector"](pooled).float()
        if self.uses("local_isd"):
            windows = self._local_windows(self._local_source_map(out["logits"], maps))
            self._teacher_step["local"] = self.relational_state["local_teacher_projector"](windows).float()
        self._teacher_step["num_labeled"] = n_l
        return {k: v[n_l:] for k, v in out.items()}

    def compute_unlabeled_losses(self, student_outputs_unlabeled, student_input, unlabeled, labeled_outputs,
                                 labeled_target) -> Dict[str, torch.Tensor]:
        logits = student_outputs_unlabeled[0] if isinstance(student_outputs_unlabeled, (list, tuple)) \
            else student_outputs_unlabeled
        n_l = self._teacher_step["num_labeled"]
        maps = [m[n_l:] for m in self.student_features.pop()]  # student batch = [labeled ; strong]
        first_key = 0 if self.enqueue_labeled else n_l
        terms = {}
        if self.uses("global_isd"):
            pooled = maps[0].float().mean(tuple(range(2, maps[0].dim())))
            query = self.auxiliary_modules["global_predictor"](self.auxiliary_modules["global_projector"](pooled))
            keys = self._teacher_step["global"]
            terms["global_isd"] = relational_kl_loss(query, keys[n_l:], self.relational_state["global_queue"].features,
                                                     self.tau_s, self.tau_t)
            self._pending["global"] = keys[first_key:]
        if self.uses("local_isd"):
            n_windows = self.local_window()[3]
            windows = self._local_windows(self._local_source_map(logits, maps))
            query = self.auxiliary_modules["local_predictor"](self.auxiliary_modules["local_projector"](windows))
            keys = self._teacher_step["local"]
            terms["local_isd"] = relational_kl_loss(query, keys[n_l * n_windows:],
                                                    self.relational_state["local_queue"].features,
                                                    self.tau_s, self.tau_t)
            self._pending["local"] = keys[first_key * n_windows:]
        return terms

    def after_optimizer_step(self, step_state: dict) -> None:
        # EMA of the teacher heads, then enqueue this step's keys (after the loss: not their own anchors)
        for term in ("global", "local"):
            if term in self._pending:
                self.relational_state[f"{term}_teacher_projector"].update(self.auxiliary_modules[f"{term}_projector"])
                self.relational_state[f"{term}_queue"].enqueue(self.keys_from_all_ranks(self._pending[term]))
        self._pending = {}



class nnUNetTrainerACTIONPretrainEncoder(nnUNetTrainerMONAPretrain):
    """ACTION stage i: global ISD only, decoder frozen, no supervised loss (method_spec B.2)."""

    supervised_weight = 0.0
    train_decoder = False
    use_local = False
    loss_term_names = ("global_isd",)


class nnUNetTrainerACTIONPretrain(nnUNetTrainerMONAPretrain):
    """ACTION stage ii: 0.5 x Dice+CE + global + local ISD; start it from stage i with
    ``-pretrained_weights <stage i fold>/checkpoint_final.pth`` (module docstring)."""

    supervised_weight = 0.5
