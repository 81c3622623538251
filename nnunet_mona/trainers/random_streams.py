"""The random streams of a semi-supervised training, saved in its checkpoints so that ``--c`` continues exactly.

python's, numpy's and torch's global generators, plus the case-sampling ``RandomState`` of every loader that runs in
this process (``nnUNet_n_proc_DA=0``); loaders in worker processes are not reproducible by design (nnU-Net's).
"""
import random

import numpy as np
import torch
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter


class RandomStreamsMixin:
    """Needs ``dataloader_train`` / ``dataloader_val`` / ``dataloader_unlabeled`` (batchgenerators augmenters)."""

    def seed_in_process_loaders(self, seed: int) -> None:
        """batchgenerators' loaders draw cases from their own unseeded RandomState: seed each one (rank-aware)."""
        for i, dl in enumerate(self._in_process_loaders()):
            dl.rs = np.random.RandomState(seed + 1000 * (i + 1) + self.local_rank)

    def _in_process_loaders(self) -> list:
        """Loaders that run in this process (nnUNet_n_proc_DA=0): their sampling RNG is ours to
        seed and checkpoint. Worker-process loaders are not reproducible by design."""
        return [a.data_loader for a in (self.dataloader_train, self.dataloader_val, self.dataloader_unlabeled)
                if isinstance(a, SingleThreadedAugmenter)]

    def random_state(self) -> dict:
        return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "loaders": [dl.rs.get_state() for dl in self._in_process_loaders()]}

    def set_random_state(self, state: dict) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"].cpu())
        loaders = self._in_process_loaders()
        if len(loaders) == len(state["loaders"]):
            for dl, rs in zip(loaders, state["loaders"]):
                dl.rs.set_state(rs)
