"""Which unlabeled cases a fold trains on, and how their images are read (never their labels).

Two sources are combined:

(a) simulated scarcity: ``splits_final.json[fold]['unlabeled']`` lists training cases of the LABELED folder
    ``<preprocessed>/<data_identifier>`` whose labels are hidden. Their ``<id>_seg.b2nd`` holds real labels and
    must never be opened; only ``<id>.b2nd`` is read.
(b) real unlabeled images: every case in the sibling folder ``<preprocessed>/<data_identifier>_unlabeled``
    (written by ``nnUNetv2_mona_preprocess_unlabeled``).

Images are stored by nnU-Net as float32 ``(C, Z, Y, X)``; 2D data have Z == 1.
"""
import os
from typing import Dict, List, Optional, Tuple

import blosc2

from nnunet_mona.data.paths import unlabeled_preprocessed_folder

_KNOWN_CONFIGURATIONS = ("3d_cascade_fullres", "3d_fullres", "3d_lowres", "2d")


def _list_image_identifiers(folder: str) -> List[str]:
    """Same rule as nnUNetDatasetBlosc2.get_identifiers: every ``*.b2nd`` that is not ``*_seg.b2nd``."""
    return sorted(i[:-5] for i in os.listdir(folder) if i.endswith(".b2nd") and not i.endswith("_seg.b2nd"))


def _cli_hint(preprocessed_dataset_folder: str, data_identifier: str) -> Tuple[str, str]:
    """Best-effort command arguments for the error messages: ``('-d X', '-d X -c CFG')``."""
    name = os.path.basename(os.path.normpath(preprocessed_dataset_folder))
    dataset = name[len("Dataset"):].split("_")[0] if name.startswith("Dataset") else name
    cfg = next((c for c in _KNOWN_CONFIGURATIONS if data_identifier.endswith("_" + c)), "CONFIGURATION")
    return f"-d {dataset}", f"-d {dataset} -c {cfg}"


def resolve_unlabeled_cases(preprocessed_dataset_folder: str, data_identifier: str, fold_split: Optional[dict],
                            labeled_ids: List[str]) -> Dict[str, str]:
    """Return ``{case id: folder that holds <id>.b2nd}`` for all unlabeled cases of one fold.

    preprocessed_dataset_folder: ``nnUNet_preprocessed/DatasetXXX_Name``
    data_identifier: the configuration's data identifier, e.g. ``nnUNetPlans_2d``
    fold_split: this fold's entry of splits_final.json (``{'train', 'val'[, 'unlabeled']}``) or None
    labeled_ids: ids the trainer uses with labels (train AND val of this fold); none of them may be unlabeled

    Raises RuntimeError (what is wrong and the command that fixes it) if there is no unlabeled case at all, an
    unlabeled id is also labeled, a listed id has no ``<id>.b2nd``, or an id occurs twice across/within sources.
    """
    hint_d, hint = _cli_hint(preprocessed_dataset_folder, data_identifier)
    labeled_folder = os.path.join(preprocessed_dataset_folder, data_identifier)
    sibling = unlabeled_preprocessed_folder(preprocessed_dataset_folder, data_identifier)

    from_split = list((fold_split or {}).get("unlabeled", []) or [])
    dup_in_split = sorted({i for i in from_split if from_split.count(i) > 1})
    if dup_in_split:
        raise RuntimeError(f"The 'unlabeled' list of this fold in splits_final.json contains ids more than once: "
                           f"{dup_in_split}. Rewrite the splits with `nnUNetv2_mona_make_splits {hint_d}` "
                           f"or remove the duplicates by hand.")
    missing = [i for i in from_split if not os.path.isfile(os.path.join(labeled_folder, i + ".b2nd"))]
    if missing:
        raise RuntimeError(f"{len(missing)} case(s) listed as 'unlabeled' in splits_final.json have no image "
                           f"'<id>.b2nd' in {labeled_folder}: {missing[:10]}{' ...' if len(missing) > 10 else ''}. "
                           f"The 'unlabeled' list must name training cases of this dataset; were the splits written "
                           f"for another dataset, or is this configuration not preprocessed? Preprocess with "
                           f"`nnUNetv2_preprocess {hint}` or rewrite the splits with "
                           f"`nnUNetv2_mona_make_splits {hint_d}`.")
    cases = {i: labeled_folder for i in from_split}

    from_sibling = _list_image_identifiers(sibling) if os.path.isdir(sibling) else []
    dup_across = sorted(set(from_sibling) & set(cases))
    if dup_across:
        raise RuntimeError(f"Case id(s) {dup_across[:10]} are both in the split's 'unlabeled' list (labeled folder "
                           f"{labeled_folder}) and in the unlabeled folder {sibling}. Each case may come from one "
                           f"source only: rename the files in nnUNet_raw/.../imagesUnlabeled and rerun "
                           f"`nnUNetv2_mona_preprocess_unlabeled {hint}`, or drop them from the split.")
    cases.update({i: sibling for i in from_sibling})

    leaked = sorted(set(cases) & set(labeled_ids))
    if leaked:
        raise RuntimeError(f"Case id(s) {leaked[:10]}{' ...' if len(leaked) > 10 else ''} are unlabeled AND used with "
                           f"labels (train or val of this fold). An unlabeled case must not be a labeled one. Rewrite "
                           f"the splits with `nnUNetv2_mona_make_splits {hint_d}` (the 'unlabeled' list must be "
                           f"disjoint from 'train' and 'val'), or rename/remove the case in imagesUnlabeled and rerun "
                           f"`nnUNetv2_mona_preprocess_unlabeled {hint}`.")
    if not cases:
        raise RuntimeError(f"No unlabeled case found: the fold's split has no 'unlabeled' list and the unlabeled "
                           f"folder {sibling} {'is empty' if os.path.isdir(sibling) else 'does not exist'}. Either put "
                           f"images into nnUNet_raw/<dataset>/imagesUnlabeled and run "
                           f"`nnUNetv2_mona_preprocess_unlabeled {hint}`, or hide labels of training cases with "
                           f"`nnUNetv2_mona_make_splits {hint_d}` (simulated scarcity).")
    return dict(sorted(cases.items()))


class UnlabeledImageDataset(object):
    """Images of unlabeled cases, read lazily and memory-mapped, exactly like nnUNetDatasetBlosc2 reads data.

    Opens ONLY ``<folder>/<id>.b2nd``: never ``<id>_seg.b2nd`` (it may hold hidden real labels), never ``<id>.pkl``.
    """

    def __init__(self, folders_by_id: Dict[str, str]):
        if len(folders_by_id) == 0:
            raise RuntimeError("UnlabeledImageDataset needs at least one case (see resolve_unlabeled_cases)")
        missing = [i for i, f in folders_by_id.items() if not os.path.isfile(os.path.join(f, i + ".b2nd"))]
        if missing:
            raise RuntimeError(f"Unlabeled image file(s) missing: "
                               f"{[os.path.join(folders_by_id[i], i + '.b2nd') for i in missing[:5]]}")
        self.folders_by_id = dict(folders_by_id)
        self.identifiers = sorted(self.folders_by_id)
        blosc2.set_nthreads(1)
        # mmap does not work on Windows; same switch as nnUNetDatasetBlosc2
        self.mmap_kwargs = {} if os.name == "nt" else {"mmap_mode": "r"}

    def __len__(self) -> int:
        return len(self.identifiers)

    def image_path(self, identifier: str) -> str:
        return os.path.join(self.folders_by_id[identifier], identifier + ".b2nd")

    def load_image(self, identifier: str):
        """Lazily opened blosc2 NDArray of shape (C, Z, Y, X), float32; slicing it returns numpy arrays."""
        return blosc2.open(urlpath=self.image_path(identifier), mode="r", dparams={"nthreads": 1},
                           **self.mmap_kwargs)
