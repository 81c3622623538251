"""MixCL-style mixed contrastive PRE-training inside nnU-Net (method_spec C; design from the abstract).

MixCL ("Pixel label matters to contrastive learning", arXiv 2203.02114) pre-trains with three
consistencies on an aggregate of datasets, some with pixel labels. Only the abstract is public;
this is our reading of it (method_spec C (a)-(c)), to be fine-tuned afterwards with nnU-Net's
``-pretrained_weights`` (see the recipe below). Per iteration, on top of the base class's batch
(labeled patches; unlabeled patches as a weak and a strong view of the same geometry):

* supervised: nnU-Net's deep-supervision Dice+CE on the labeled patches (``supervised_weight``);
* identity consistency (``identity``): global embedding = ProjectionMLP(global average pool of
  the bottleneck, ``encoder.stages[-1]``). Query = student on the strong (masked) view, key =
  EMA teacher + EMA copy of the projector on the weak view of the same patch. InfoNCE: positive =
  same patch, negatives = the other unlabeled patches of the batch (other slices/patches of the
  same case excluded) + a FIFO queue of past keys (``losses/identity_contrast.py``);
* label consistency (``label``): supervised pixel contrast on the labeled patches. A
  PixelProjectionHead on decoder stage ``label_feature_stage`` (default -2, half resolution);
  ground truth resized (nearest) to it. Class-balanced InfoNCE of ``anatomical_contrast_loss``
  with one-hot ground truth as "probabilities": anchors = ``label_num_queries`` pixels per
  class, positive = the class prototype (mean detached embedding of all pixels of that class
  across the images of the batch), negatives = other-class pixels of the batch and a per-class
  memory bank of past embeddings (other images, other datasets). Pixels sharing a label are
  thus pulled together across images and iterations, classes pushed apart;
* reconstruction consistency (``reconstruction``): a small conv head (outside the network) on
  the student's full-resolution decoder features (stage ``reconstruction_feature_stage``) of the
  strong view, in which ``reconstruction_mask_ratio`` of the cells of a block grid are zeroed,
  decodes the weak (intensity-unaugmented) view; L1 over valid pixels (or only masked ones).

A weight of 0 disables a term (no head, no computation; its curve is NaN). There is no
ramp-up (``unsupervised_rampup_fraction = 0``): these are self-supervised terms, not
pseudo-labels. Weights are untuned defaults that bring the terms to similar magnitudes.

Several datasets: extra folders of unlabeled images preprocessed with THIS dataset's plans
(``<id>.b2nd``; e.g. a renamed ``<data_identifier>_unlabeled`` folder written by
``nnUNetv2_mona_preprocess_unlabeled``) join the pool via the class attribute
``extra_unlabeled_folders`` or the environment variable ``nnUNet_mona_extra_unlabeled``
(paths separated by ``os.pathsep`` or commas). Folders with a manifest must match the plans.
Simplest alternative: copy the other datasets' images (prefixed ids) into this dataset's
``imagesUnlabeled`` and run ``nnUNetv2_mona_preprocess_unlabeled`` once.

Fine-tuning recipe (the checkpoint's ``network_weights`` are the student U-Net only; the heads,
key projector, queue and bank live under ``checkpoint['semi_supervised']``):

    nnUNetv2_train D 2d 0 -tr nnUNetTrainerMixCLPretrain
    nnUNetv2_train D 2d 0 -tr nnUNetTrainer -pretrained_weights \
        $nnUNet_results/DatasetD_X/nnUNetTrainerMixCLPretrain__nnUNetPlans__2d/fold_0/checkpoint_final.pth
"""
import os
import re
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mona.losses.anatomical_contrast import anatomical_contrast_loss
from nnunet_mona.losses.identity_contrast import identity_info_nce, same_case_matrix
from nnunet_mona.losses.reconstruction import random_patch_mask, reconstruction_loss
from nnunet_mona.modules.ema_teacher import EMATeacher, unwrap_network
from nnunet_mona.modules.feature_hooks import DecoderFeatureCollector, decoder_level_channels
from nnunet_mona.modules.memory_bank import ClassMemoryBank, FeatureQueue
from nnunet_mona.modules.projection_heads import PixelProjectionHead, ProjectionMLP
from nnunet_mona.trainers.semi_supervised_base import nnUNetTrainerSemiSupervised

EXTRA_UNLABELED_VARIABLE = "nnUNet_mona_extra_unlabeled"
_CONV = {2: nn.Conv2d, 3: nn.Conv3d}


def label_consistency_loss(embedding: torch.Tensor, labels: torch.Tensor, num_classes: int,
                           memory_bank: Optional[ClassMemoryBank] = None, num_queries: int = 128,
                           num_negatives: int = 256, temperature: float = 0.1, keys_per_class: int = 128,
                           generator: Optional[torch.Generator] = None):
    """Supervised, class-balanced pixel InfoNCE (``anatomical_contrast_loss`` with one-hot labels).

    embedding: (B, D, *S) student pixel embeddings (gradient); labels: (B, *S) long, -1 = ignore.
    Keys (prototypes, batch negatives, what is returned for the bank) are the detached embeddings.
    Returns (loss scalar fp32, keys (M, D), key labels (M,)).
    """
    probs = F.one_hot(labels.clamp(min=0).long(), num_classes).movedim(-1, 1).float()
    valid = labels >= 0
    return anatomical_contrast_loss(embedding, embedding.detach(), labels, probs, valid, valid,
                                    memory_bank=memory_bank, num_queries=num_queries, num_negatives=num_negatives,
                                    temperature=temperature, positive_threshold=0.5, negative_threshold=0.5,
                                    generator=generator, max_keys_per_class=keys_per_class)


class nnUNetTrainerMixCLPretrain(nnUNetTrainerSemiSupervised):
    checkpointed_modules = {"mixcl_state": "mixcl_state"}  # key projector, identity queue, label bank
    supervised_weight: float = 1.0
    loss_weights = {"identity": 0.1, "label": 0.1, "reconstruction": 1.0}
    loss_term_names = ("identity", "label", "reconstruction")
    unsupervised_rampup_fraction = 0.0
    # identity consistency
    identity_hidden_dim: int = 256
    identity_embedding_dim: int = 128
    identity_temperature: float = 0.2
    identity_queue_size: int = 256
    identity_exclude_same_case: bool = True
    # label consistency
    label_feature_stage: int = -2
    label_embedding_dim: int = 64
    label_temperature: float = 0.1
    label_num_queries: int = 128
    label_num_negatives: int = 256
    label_keys_per_class: int = 128
    label_bank_size: int = 2048
    # reconstruction consistency
    reconstruction_feature_stage: int = -1
    reconstruction_kind: str = "l1"
    reconstruction_mask_ratio: float = 0.3  # 0: no masking (plain strong -> weak reconstruction)
    reconstruction_mask_cells: int = 8  # mask grid cells per axis (cell = patch / 8)
    reconstruction_loss_region: str = "valid"  # or "masked": only masked-out valid pixels
    # several datasets
    extra_unlabeled_folders: tuple = ()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.student_features: Optional[DecoderFeatureCollector] = None
        self.teacher_features: Optional[DecoderFeatureCollector] = None
        self.mixcl_state: Optional[nn.ModuleDict] = None  # key projector (EMA), identity queue, label bank
        self._feature_index: Dict[str, int] = {}
        self._teacher_step: Optional[dict] = None
        self._pending: dict = {}

    def uses(self, term: str) -> bool:
        return self.loss_weights.get(term, 1.0) > 0

    # ------------------------------------------------------------------ set-up
    def build_auxiliary_modules(self) -> Optional[nn.ModuleDict]:
        net = unwrap_network(self.network)
        n_dec = len(net.decoder.stages)
        channels = decoder_level_channels(net)  # [bottleneck, decoder.stages[0..]]
        stages = sorted({self.label_feature_stage % n_dec, self.reconstruction_feature_stage % n_dec})
        self.student_features = DecoderFeatureCollector(self.network, decoder_stages=stages, include_bottleneck=True)
        self._feature_index = {"label": 1 + stages.index(self.label_feature_stage % n_dec),
                               "reconstruction": 1 + stages.index(self.reconstruction_feature_stage % n_dec)}
        dims = len(self.configuration_manager.patch_size)
        modules = {}
        if self.uses("identity"):
            modules["identity_projector"] = self._new_identity_projector()
        if self.uses("label"):
            c = channels[1 + self.label_feature_stage % n_dec]
            modules["label_projector"] = PixelProjectionHead(c, c, self.label_embedding_dim, spatial_dims=dims)
        if self.uses("reconstruction"):
            c, conv = channels[1 + self.reconstruction_feature_stage % n_dec], _CONV[dims]
            modules["reconstruction_head"] = nn.Sequential(conv(c, c, 3, padding=1), nn.LeakyReLU(0.01, inplace=True),
                                                           conv(c, self.num_input_channels, 1))
        return nn.ModuleDict(modules) if modules else None

    def _new_identity_projector(self) -> ProjectionMLP:
        bottleneck = decoder_level_channels(unwrap_network(self.network))[0]
        return ProjectionMLP(bottleneck, self.identity_hidden_dim, self.identity_embedding_dim)

    def initialize(self):
        if self.was_initialized:
            return
        super().initialize()  # network, configure_optimizers (-> build_auxiliary_modules), teacher
        self.teacher_features = DecoderFeatureCollector(self.teacher.model, decoder_stages=[],
                                                        include_bottleneck=True)
        state = {"label_bank": ClassMemoryBank(self.label_manager.num_segmentation_heads, self.label_embedding_dim,
                                               self.label_bank_size, background_capacity=None)}
        if self.uses("identity"):
            state["key_projector"] = EMATeacher(self._new_identity_projector().to(self.device),
                                                self.auxiliary_modules["identity_projector"],
                                                decay=self.ema_decay, warmup=self.ema_warmup)
            state["identity_queue"] = FeatureQueue(self.identity_embedding_dim, self.identity_queue_size)
        self.mixcl_state = nn.ModuleDict(state).to(self.device)

    # ------------------------------------------------------------------ data (several datasets)
    def extra_unlabeled_cases(self) -> Dict[str, str]:
        """{case id: folder} of the extra unlabeled folders (attribute + environment variable)."""
        folders = list(self.extra_unlabeled_folders)
        raw = os.environ.get(EXTRA_UNLABELED_VARIABLE, "")
        folders += [f for f in re.split(r"[,%s]" % re.escape(os.pathsep), raw) if f.strip()]
        from nnunet_mona.data._prep_manifest import compute_plans_hash, read_manifest
        expected_hash = compute_plans_hash(self.plans_manager, self.configuration_name)
        cases = {}
        for folder in folders:
            folder = os.path.abspath(os.path.expanduser(folder.strip()))
            if not os.path.isdir(folder):
                raise RuntimeError(f"{EXTRA_UNLABELED_VARIABLE}/extra_unlabeled_folders: {folder} is not a folder")
            manifest = read_manifest(folder)
            if manifest is not None and manifest.get("plans_hash") != expected_hash:
                raise RuntimeError(f"The extra unlabeled folder {folder} was preprocessed with other plans than "
                                   f"{self.plans_manager.plans_name}/{self.configuration_name} of this dataset. "
                                   f"Preprocess its images with this dataset's plans.")
            ids = sorted(i[:-5] for i in os.listdir(folder) if i.endswith(".b2nd") and not i.endswith("_seg.b2nd"))
            if not ids:
                raise RuntimeError(f"The extra unlabeled folder {folder} holds no <id>.b2nd image")
            clash = sorted(set(ids) & set(cases))
            if clash:
                raise RuntimeError(f"Case ids {clash[:5]} occur in several extra unlabeled folders; rename them")
            cases.update({i: folder for i in ids})
        return cases

    def unlabeled_cases(self, labeled_ids: List[str]) -> Dict[str, str]:
        """The base pool plus the extra unlabeled folders (other datasets, same plans)."""
        extra = self.extra_unlabeled_cases()
        try:
            folders_by_id = super().unlabeled_cases(labeled_ids)
        except RuntimeError as e:  # an aggregate of other datasets may be the only unlabeled source
            if not (extra and str(e).startswith("No unlabeled case found")):
                raise
            folders_by_id = {}
        clash = sorted(set(extra) & (set(folders_by_id) | set(labeled_ids)))
        if clash:
            raise RuntimeError(f"Extra unlabeled case ids {clash[:5]} are also cases of this dataset; give the "
                               f"other datasets' cases distinct ids (e.g. a dataset prefix)")
        self.print_to_log_file(f"Extra unlabeled folders: {len(extra)} cases")
        return dict(sorted({**folders_by_id, **extra}.items()))

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: dict) -> dict:
        self._teacher_step, self._pending = {}, {}
        try:
            with self.student_features.collecting(), self.teacher_features.collecting():
                return super().train_step(batch)
        finally:
            self._teacher_step, self._pending = None, {}

    @torch.no_grad()
    def teacher_predict(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = super().teacher_predict(images)
        if self._teacher_step is not None and self.teacher_features.enabled:
            bottleneck = self.teacher_features.pop()[0]
            self._teacher_step["pooled"] = bottleneck.float().mean(tuple(range(2, bottleneck.dim())))
        return out

    def make_student_unlabeled_input(self, unlabeled, teacher_out):
        """Strong view, with ``reconstruction_mask_ratio`` of a block grid zeroed ('mask' (B, *P) bool)."""
        student_input = super().make_student_unlabeled_input(unlabeled, teacher_out)
        image = student_input["image"]
        mask = torch.zeros((image.shape[0], *image.shape[2:]), dtype=torch.bool, device=image.device)
        if self.uses("reconstruction") and self.reconstruction_mask_ratio > 0:
            cell = [max(1, s // self.reconstruction_mask_cells) for s in image.shape[2:]]
            mask = random_patch_mask(image.shape[0], image.shape[2:], cell, self.reconstruction_mask_ratio,
                                     device=image.device)
            image = image.masked_fill(mask[:, None], 0.0)
        student_input.update(image=image, mask=mask)
        return student_input

    # ------------------------------------------------------------------ losses
    def _labels_at(self, target, size) -> torch.Tensor:
        """Ground truth (B, *size) long, nearest-resized; the ignore label becomes -1."""
        seg = (target[0] if isinstance(target, (list, tuple)) else target)[:, :1].float()
        if tuple(seg.shape[2:]) != tuple(size):
            seg = F.interpolate(seg, size=tuple(size), mode="nearest")
        labels = seg[:, 0].long()
        if self.label_manager.has_ignore_label:
            labels[labels == self.label_manager.ignore_label] = -1
        return labels

    def compute_unlabeled_losses(self, student_outputs_unlabeled, student_input, unlabeled, labeled_outputs,
                                 labeled_target) -> Dict[str, torch.Tensor]:
        n_l = (labeled_outputs[0] if isinstance(labeled_outputs, (list, tuple)) else labeled_outputs).shape[0]
        maps = self.student_features.pop()  # [bottleneck, stages...], batch = [labeled ; unlabeled]
        terms = {}
        if self.uses("identity"):
            bottleneck = maps[0][n_l:]
            query = self.auxiliary_modules["identity_projector"](bottleneck.mean(tuple(range(2, bottleneck.dim()))))
            key = self.mixcl_state["key_projector"](self._teacher_step["pooled"]).float()
            exclude = same_case_matrix(unlabeled["keys"]) if self.identity_exclude_same_case and \
                "keys" in unlabeled else None
            terms["identity"] = identity_info_nce(query, key, self.mixcl_state["identity_queue"].features,
                                                  self.identity_temperature, exclude)
            self._pending["identity_keys"] = key.detach()
        if self.uses("label"):
            embedding = self.auxiliary_modules["label_projector"](maps[self._feature_index["label"]][:n_l])
            labels = self._labels_at(labeled_target, embedding.shape[2:])
            loss, keys, key_labels = label_consistency_loss(
                embedding, labels, self.label_manager.num_segmentation_heads, self.mixcl_state["label_bank"],
                self.label_num_queries, self.label_num_negatives, self.label_temperature, self.label_keys_per_class)
            terms["label"] = loss
            self._pending["label_keys"] = (keys, key_labels)
        if self.uses("reconstruction"):
            features = maps[self._feature_index["reconstruction"]][n_l:]
            reconstruction = self.auxiliary_modules["reconstruction_head"](features)
            target = unlabeled["data_weak"]
            if reconstruction.shape[2:] != target.shape[2:]:
                mode = "bilinear" if target.dim() == 4 else "trilinear"
                reconstruction = F.interpolate(reconstruction, size=target.shape[2:], mode=mode, align_corners=False)
            region = student_input["valid"]
            if self.reconstruction_loss_region == "masked":
                region = region & student_input["mask"]
            elif self.reconstruction_loss_region != "valid":
                raise ValueError(f"reconstruction_loss_region must be 'valid' or 'masked', "
                                 f"got {self.reconstruction_loss_region!r}")
            terms["reconstruction"] = reconstruction_loss(reconstruction, target, region, self.reconstruction_kind)
        return terms

    def after_optimizer_step(self, step_state: dict) -> None:
        if "identity_keys" in self._pending:
            self.mixcl_state["key_projector"].update(self.auxiliary_modules["identity_projector"])
            self.mixcl_state["identity_queue"].enqueue(self.keys_from_all_ranks(self._pending["identity_keys"]))
        if "label_keys" in self._pending:
            self.mixcl_state["label_bank"].enqueue(*self.keys_from_all_ranks(*self._pending["label_keys"]))

