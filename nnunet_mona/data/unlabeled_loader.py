"""Infinite loader of unlabeled patches: one geometry, a weak (teacher) and a strong (student) view.

Sampling follows nnUNetDataLoader with ``force_fg=False``: cases uniformly with replacement, random boxes that may
reach the image borders (the enlarged patch is padded with 0), 2D patch sizes on 3D-stored data pick random slices.
There is no foreground oversampling (no labels), and no label, mask or properties file is ever opened.
"""
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.dataloading.data_loader import DataLoader
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from threadpoolctl import threadpool_limits

from nnunet_mona.data.unlabeled_pool import UnlabeledImageDataset


class nnUNetUnlabeledDataLoader(DataLoader):
    def __init__(self, dataset: UnlabeledImageDataset, batch_size: int,
                 patch_size: Union[Sequence[int], np.ndarray], final_patch_size: Union[Sequence[int], np.ndarray],
                 spatial: Optional[BasicTransform], weak: Optional[BasicTransform],
                 strong: Optional[BasicTransform]):
        """
        dataset: UnlabeledImageDataset (images (C, Z, Y, X)).
        patch_size: initial (enlarged) patch size that is cropped from the image, 2 or 3 entries.
        final_patch_size: P, what the network gets (spatial must crop patch_size to it).
        spatial / weak / strong: see nnunet_mona.data.unlabeled_transforms.build_unlabeled_transforms. None means
        identity (then patch_size must equal final_patch_size).

        A batch (see generate_train_batch) is
            'data_weak':   float32 (B, C, *P)   teacher view
            'data_strong': float32 (B, C, *P)   student view, same geometry as data_weak
            'valid_mask':  bool    (B, 1, *P)   False where the pixel lies outside the image (padding)
            'keys':        list of B case ids
        """
        super().__init__(dataset, batch_size, 1, None, True, False, True, None)
        if len(patch_size) != len(final_patch_size):
            raise ValueError(f"patch_size {patch_size} and final_patch_size {final_patch_size} differ in length")
        # a 2D patch becomes (1, y, x): random slices of the (C, Z, Y, X) arrays, dummy axis removed after cropping
        self.patch_size_was_2d = len(patch_size) == 2
        if self.patch_size_was_2d:
            patch_size, final_patch_size = (1, *patch_size), (1, *final_patch_size)
        self.patch_size = tuple(int(i) for i in patch_size)
        self.final_patch_size = tuple(int(i) for i in final_patch_size)
        self.need_to_pad = (np.array(self.patch_size) - np.array(self.final_patch_size)).astype(int)
        self.indices = dataset.identifiers  # DataLoader.get_indices samples from these (uniform, with replacement)
        self.spatial, self.weak, self.strong = spatial, weak, strong
        self._creator_pid = os.getpid()
        self._torch_seeded_pid = None

    def _maybe_seed_torch(self):
        """bg2 draws RandomTransform/mirror decisions from torch's global RNG. Forked DA workers all inherit the
        parent's torch state (NonDetMultiThreadedAugmenter with seeds=None only reseeds numpy), so each worker seeds
        torch once from its (reseeded) numpy RNG. In the process that built the loader (SingleThreadedAugmenter)
        the trainer's torch RNG is left alone."""
        pid = os.getpid()
        if pid != self._creator_pid and pid != self._torch_seeded_pid:
            torch.manual_seed(np.random.randint(2 ** 31))
            self._torch_seeded_pid = pid

    def get_bbox(self, data_shape: Sequence[int]):
        """Random box of size self.patch_size; identical to nnUNetDataLoader.get_bbox(force_fg=False, no ignore
        label). Returns (lower bounds, upper bounds), may lie partly outside [0, data_shape)."""
        need_to_pad = self.need_to_pad.copy()
        dim = len(data_shape)
        for d in range(dim):
            if need_to_pad[d] + data_shape[d] < self.patch_size[d]:
                need_to_pad[d] = self.patch_size[d] - data_shape[d]
        lbs = [- need_to_pad[i] // 2 for i in range(dim)]
        ubs = [data_shape[i] + need_to_pad[i] // 2 + need_to_pad[i] % 2 - self.patch_size[i] for i in range(dim)]
        bbox_lbs = [np.random.randint(lbs[i], ubs[i] + 1) for i in range(dim)]
        bbox_ubs = [bbox_lbs[i] + self.patch_size[i] for i in range(dim)]
        return bbox_lbs, bbox_ubs

    @staticmethod
    def validity_of_box(data_shape: Sequence[int], bbox_lbs: Sequence[int], patch_size: Sequence[int]) -> torch.Tensor:
        """int16 (1, *patch_size): 1 where the box covers the image, -1 where it is padding."""
        validity = torch.full((1, *patch_size), -1, dtype=torch.int16)
        inside = tuple(slice(max(0, -lb), max(0, min(p, s - lb))) for lb, p, s in zip(bbox_lbs, patch_size, data_shape))
        validity[(slice(None), *inside)] = 1
        return validity

    def load_sample(self, identifier: str):
        """Crop/pad one random box. Returns image float32 (C, *patch_size) and validity int16 (1, *patch_size)
        (dummy Z axis removed for 2D patch sizes)."""
        data = self._data.load_image(identifier)
        shape = data.shape[1:]
        bbox_lbs, bbox_ubs = self.get_bbox(shape)
        patch = torch.from_numpy(crop_and_pad_nd(data, [[a, b] for a, b in zip(bbox_lbs, bbox_ubs)], 0)).float()
        validity = self.validity_of_box(shape, bbox_lbs, self.patch_size)
        if self.patch_size_was_2d:
            patch, validity = patch[:, 0], validity[:, 0]
        return patch, validity

    def make_views(self, patch: torch.Tensor, validity: torch.Tensor):
        """One spatial transform, then weak/strong intensity on clones. Returns weak (C, *P), strong (C, *P),
        valid bool (1, *P)."""
        if self.spatial is not None:
            out = self.spatial(**{'image': patch, 'segmentation': validity})
            patch, validity = out['image'], out['segmentation']
        # bg2 intensity transforms modify their input in place: each view gets its own copy
        weak = self.weak(**{'image': patch.clone()})['image'] if self.weak is not None else patch.clone()
        strong = self.strong(**{'image': patch.clone()})['image'] if self.strong is not None else patch.clone()
        return weak, strong, validity >= 0

    def generate_train_batch(self) -> dict:
        self._maybe_seed_torch()
        keys = [str(i) for i in self.get_indices()]
        data_weak = data_strong = valid_mask = None
        with torch.no_grad():
            with threadpool_limits(limits=1, user_api=None):
                for j, key in enumerate(keys):
                    weak, strong, valid = self.make_views(*self.load_sample(key))
                    if data_weak is None:
                        data_weak = torch.empty((self.batch_size, *weak.shape), dtype=torch.float32)
                        data_strong = torch.empty((self.batch_size, *strong.shape), dtype=torch.float32)
                        valid_mask = torch.empty((self.batch_size, *valid.shape), dtype=torch.bool)
                    data_weak[j] = weak
                    data_strong[j] = strong
                    valid_mask[j] = valid
        return {'data_weak': data_weak, 'data_strong': data_strong, 'valid_mask': valid_mask, 'keys': keys}


def default_unlabeled_num_processes() -> int:
    """Half of nnU-Net's DA workers (nnUNet_n_proc_DA / hostname table), at least 1; 0 if nnU-Net uses 0."""
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
    n = get_allowed_n_proc_DA()
    return 0 if n == 0 else max(1, n // 2)


def make_unlabeled_augmenter(loader: nnUNetUnlabeledDataLoader, num_processes: int):
    """SingleThreadedAugmenter (in-process) for 0, else NonDetMultiThreadedAugmenter with ``num_processes``
    workers (seeds=None: numpy is reseeded per worker, torch by the loader). Not primed: call next() yourself."""
    if num_processes == 0:
        return SingleThreadedAugmenter(loader, None)
    return NonDetMultiThreadedAugmenter(loader, None, num_processes, num_cached=max(2, num_processes), seeds=None,
                                        pin_memory=torch.cuda.is_available(), wait_time=0.002)
