"""Where the training case ids of a dataset come from when making splits.

1. the labeled preprocessed folders ``nnUNet_preprocessed/DatasetXXX/<data_identifier>/`` (what
   ``nnUNetTrainer.do_split`` itself uses; ``*_unlabeled`` folders and ``gt_segmentations`` are ignored),
2. else ``nnUNet_raw/DatasetXXX/imagesTr`` (or the ``dataset`` dict of dataset.json) if not preprocessed yet.
"""
import json
import os
from typing import List, Tuple

from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

from nnunet_mona.data.paths import UNLABELED_SUFFIX


def _ids_in_data_folder(folder: str) -> List[str]:
    files = os.listdir(folder)
    ids = {f[:-5] for f in files if f.endswith(".b2nd") and not f.endswith("_seg.b2nd")}
    ids |= {f[:-4] for f in files if f.endswith(".npz")}
    return sorted(ids)


def case_ids_from_preprocessed(preprocessed_dataset_folder: str) -> Tuple[List[str], str]:
    """(ids, description of the source); ([], '') if no labeled preprocessed folder exists.
    Fails if two configurations' folders hold different cases (an interrupted preprocessing)."""
    if not os.path.isdir(preprocessed_dataset_folder):
        return [], ""
    found = {}
    for d in sorted(os.listdir(preprocessed_dataset_folder)):
        full = os.path.join(preprocessed_dataset_folder, d)
        if not os.path.isdir(full) or d.endswith(UNLABELED_SUFFIX) or d == "gt_segmentations":
            continue
        ids = _ids_in_data_folder(full)
        if ids:
            found[d] = ids
    if not found:
        return [], ""
    names = list(found)
    reference = found[names[0]]
    for n in names[1:]:
        if found[n] != reference:
            diff = sorted(set(found[n]) ^ set(reference))
            raise ValueError(f"The preprocessed folders {names[0]} and {n} in {preprocessed_dataset_folder} hold "
                             f"different cases (e.g. {diff[:5]}); one preprocessing did not finish. Re-run "
                             f"nnUNetv2_preprocess for it.")
    return reference, f"{preprocessed_dataset_folder}/{{{','.join(names)}}}"


def case_ids_from_raw(raw_dataset_folder: str) -> Tuple[List[str], str]:
    """(ids, source) from raw imagesTr (ids = file names without ``_XXXX<file_ending>``) or dataset.json."""
    dataset_json_file = os.path.join(raw_dataset_folder, "dataset.json")
    if not os.path.isfile(dataset_json_file):
        return [], ""
    with open(dataset_json_file) as f:
        dataset_json = json.load(f)
    if "dataset" in dataset_json:
        return sorted(dataset_json["dataset"].keys()), dataset_json_file
    images_tr = os.path.join(raw_dataset_folder, "imagesTr")
    if not os.path.isdir(images_tr):
        return [], ""
    fe = dataset_json["file_ending"]
    ids = {f[:-(len(fe) + 5)] for f in os.listdir(images_tr) if f.endswith(fe) and len(f) > len(fe) + 5}
    return sorted(ids), images_tr


def get_training_case_ids(dataset_name: str) -> Tuple[List[str], str]:
    """Training case ids of ``dataset_name`` and where they were read from."""
    pre = os.path.join(os.fspath(nnUNet_preprocessed), dataset_name)
    ids, source = case_ids_from_preprocessed(pre)
    if not ids and nnUNet_raw.is_set():
        ids, source = case_ids_from_raw(os.path.join(os.fspath(nnUNet_raw), dataset_name))
    if not ids:
        raise ValueError(f"No training cases found for {dataset_name}: neither a preprocessed folder in {pre} nor "
                         f"imagesTr in nnUNet_raw/{dataset_name}.")
    return ids, source
