"""Per-sample CPU transforms of the unlabeled stream: one shared geometry, a weak and a strong intensity view.

* spatial: exactly nnU-Net's geometry (``nnUNetTrainer.get_training_transforms``): [Convert3DTo2D]
  SpatialTransform (same parameters) [Convert2DTo3D], then MirrorTransform. Mirroring is moved in front of the
  intensity transforms, which is harmless because they are flip-equivariant. Applied ONCE per sample, to
  ``{'image': (C, *P), 'segmentation': (1, *P) validity}``; both views are built from its output.
* weak (teacher view): NO intensity augmentation. The teacher should see the least corrupted version of the
  patch so that its pseudo-labels are as good as possible (FixMatch/UniMatch/MONA use geometry-only weak views).
  Returned as an empty ComposeTransforms so callers can treat all three uniformly.
* strong (student view): nnU-Net's intensity family with larger probabilities and ranges
  (``StrongIntensityConfig``). No SimulateLowResolution: it resamples and would break pixel alignment of thin
  structures between the teacher's and the student's view. Cutout/CutMix are not done here (on the GPU, per batch).

bg2 intensity transforms work IN PLACE: call weak/strong on clones of the spatially transformed patch.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from batchgeneratorsv2.helpers.scalar_type import RandomScalar
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform


@dataclass
class StrongIntensityConfig:
    """Probabilities (per sample) and ranges of the strong view. nnU-Net's defaults are given in brackets.

    A probability of 0 removes the transform. ``StrongIntensityConfig.off()`` disables everything (strong == weak).
    """
    p_noise: float = 0.3  # [0.1]
    noise_variance: Tuple[float, float] = (0.0, 0.15)  # [(0, 0.1)]
    p_blur: float = 0.3  # [0.2]
    blur_sigma: Tuple[float, float] = (0.5, 1.5)  # [(0.5, 1)]
    p_blur_per_channel: float = 0.5  # [0.5]
    p_brightness: float = 0.5  # [0.15]
    brightness_range: Tuple[float, float] = (0.6, 1.4)  # [(0.75, 1.25)]
    p_contrast: float = 0.5  # [0.15]
    contrast_range: Tuple[float, float] = (0.6, 1.4)  # [(0.75, 1.25)]
    p_gamma_inverted: float = 0.15  # [0.1]
    p_gamma: float = 0.5  # [0.3]
    gamma_range: Tuple[float, float] = (0.5, 2.0)  # [(0.7, 1.5)]

    @classmethod
    def off(cls) -> "StrongIntensityConfig":
        return cls(p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_gamma_inverted=0, p_gamma=0)


def build_spatial_transform(patch_size: Union[Sequence[int], np.ndarray], rotation_for_DA: RandomScalar,
                            mirror_axes: Optional[Tuple[int, ...]], do_dummy_2d_data_aug: bool) -> ComposeTransforms:
    """nnU-Net's geometric augmentation; crops the enlarged (initial) patch to ``patch_size`` (the final one)."""
    transforms = []
    if do_dummy_2d_data_aug:
        transforms.append(Convert3DTo2DTransform())
        patch_size_spatial = tuple(patch_size[1:])
    else:
        patch_size_spatial = tuple(patch_size)
    transforms.append(SpatialTransform(
        patch_size_spatial, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
        p_rotation=0.2, rotation=rotation_for_DA, p_scaling=0.2, scaling=(0.7, 1.4),
        p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False,
        border_mode_seg='constant', padding_value_seg=-1,  # -1 marks out-of-image pixels (validity mask)
    ))
    if do_dummy_2d_data_aug:
        transforms.append(Convert2DTo3DTransform())
    if mirror_axes is not None and len(mirror_axes) > 0:
        transforms.append(MirrorTransform(allowed_axes=mirror_axes))
    return ComposeTransforms(transforms)


def build_strong_intensity_transform(cfg: StrongIntensityConfig) -> ComposeTransforms:
    """nnU-Net's intensity transforms in nnU-Net's order, with the probabilities/ranges of ``cfg``."""
    t = []
    if cfg.p_noise > 0:
        t.append(RandomTransform(GaussianNoiseTransform(
            noise_variance=tuple(cfg.noise_variance), p_per_channel=1, synchronize_channels=True),
            apply_probability=cfg.p_noise))
    if cfg.p_blur > 0:
        t.append(RandomTransform(GaussianBlurTransform(
            blur_sigma=tuple(cfg.blur_sigma), synchronize_channels=False, synchronize_axes=False,
            p_per_channel=cfg.p_blur_per_channel, benchmark=True), apply_probability=cfg.p_blur))
    if cfg.p_brightness > 0:
        t.append(RandomTransform(MultiplicativeBrightnessTransform(
            multiplier_range=BGContrast(tuple(cfg.brightness_range)), synchronize_channels=False, p_per_channel=1),
            apply_probability=cfg.p_brightness))
    if cfg.p_contrast > 0:
        t.append(RandomTransform(ContrastTransform(
            contrast_range=BGContrast(tuple(cfg.contrast_range)), preserve_range=True, synchronize_channels=False,
            p_per_channel=1), apply_probability=cfg.p_contrast))
    if cfg.p_gamma_inverted > 0:
        t.append(RandomTransform(GammaTransform(
            gamma=BGContrast(tuple(cfg.gamma_range)), p_invert_image=1, synchronize_channels=False,
            p_per_channel=1, p_retain_stats=1), apply_probability=cfg.p_gamma_inverted))
    if cfg.p_gamma > 0:
        t.append(RandomTransform(GammaTransform(
            gamma=BGContrast(tuple(cfg.gamma_range)), p_invert_image=0, synchronize_channels=False,
            p_per_channel=1, p_retain_stats=1), apply_probability=cfg.p_gamma))
    return ComposeTransforms(t)


def build_unlabeled_transforms(patch_size: Union[Sequence[int], np.ndarray], rotation_for_DA: RandomScalar,
                               mirror_axes: Optional[Tuple[int, ...]], do_dummy_2d_data_aug: bool,
                               strong_config: Optional[StrongIntensityConfig] = None
                               ) -> Tuple[BasicTransform, BasicTransform, BasicTransform]:
    """Return ``(spatial, weak, strong)``; arguments as in ``nnUNetTrainer.get_training_transforms``.

    patch_size: FINAL patch size (``configuration_manager.patch_size``), 2 or 3 entries.
    spatial: ``(image (C, *P_initial), segmentation (1, *P_initial)) -> (C, *P), (1, *P)``; P = patch_size.
    weak: identity (empty ComposeTransforms), see module docstring. strong: image-only, ``(C, *P) -> (C, *P)``.
    """
    spatial = build_spatial_transform(patch_size, rotation_for_DA, mirror_axes, do_dummy_2d_data_aug)
    weak = ComposeTransforms([])
    strong = build_strong_intensity_transform(strong_config if strong_config is not None
                                              else StrongIntensityConfig())
    return spatial, weak, strong
