"""Offline self-training, the benchmark row ``SelfTraining`` (nnU-Net's maintainers' advice for unlabeled data).

1. plain nnU-Net (``nnUNetTrainerBudget``) on the fold's labeled cases -- the benchmark's own plain row, trained once
   and shared when both rows run;
2. pseudo-labelling (this module, ``python -m nnunet_mona.benchmark.self_training``): the plain model predicts every
   unlabeled case of the fold (the split's ``unlabeled`` list and ``<data_identifier>_unlabeled``, as the
   semi-supervised trainers see them) in the preprocessed space: its preprocessed image, nnU-Net's sliding window
   (``nnUNetPredictor.predict_logits_from_preprocessed_data``), argmax;
3. ``nnUNetTrainerBudget`` again, from scratch with the same epochs x iterations, on labeled + pseudo-labeled cases.

Step 2 writes a derived preprocessed dataset inside the benchmark's output folder (``labeled_N/self_training/
nnUNet_preprocessed/DatasetXXX``): the same plans and data identifier, links to everything of the benchmark's
preprocessed dataset, and a data folder holding, per case, a link to its image, its segmentation (the real one for a
labeled case, the pseudo-label for an unlabeled case) and its properties (for a pseudo-labeled case with
``class_locations`` computed from the pseudo-label, so foreground oversampling follows the pseudo-label); its
``splits_final.json`` trains on labeled + pseudo-labeled cases and validates on the fold's val cases.

The real labels of unlabeled cases are never read: only their images (``<id>.b2nd``) and properties (``<id>.pkl``,
for the geometry; their ``class_locations`` are replaced) are opened, never ``<id>_seg.b2nd`` nor a raw label file.
"""
import argparse
import json
import os
import shutil
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from nnunet_mona.benchmark.evaluate import save_json

SELF_TRAINING = "SelfTraining"
BASE_TRAINER = "nnUNetTrainerBudget"
SUFFIXES = (".b2nd", "_seg.b2nd", ".pkl")


def _link(source: str, link: str) -> None:
    os.symlink(os.path.realpath(source), link)


def _derived_split(folds: list, fold: int, pseudo: List[str]) -> list:
    """The folds with ``fold`` training on its labeled cases plus ``pseudo`` (no 'unlabeled' list left)."""
    entry = folds[fold]
    new = [dict(f) for f in folds]
    new[fold] = {"train": list(entry["train"]) + [c for c in pseudo if c not in entry["train"]],
                 "val": list(entry["val"]), "unlabeled": []}
    return new


def _write_seg(seg: np.ndarray, path: str, patch_size) -> None:
    """``seg`` (1, Z, Y, X) int16 as Blosc2, with the chunking nnU-Net's preprocessor uses for segmentations."""
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params
    blocks, chunks = comp_blosc2_params(seg.shape, tuple(patch_size), seg.itemsize)
    blosc2.asarray(np.ascontiguousarray(seg), urlpath=path, chunks=chunks, blocks=blocks,
                   cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 1})


def prepare_dataset(source: str, target: str, plans: str, configuration: str, fold: int) -> tuple:
    """Make ``target`` (links to ``source``'s entries, labeled cases linked into a fresh data folder). Returns
    (data identifier, folds, fold entry, {unlabeled case: folder of its image})."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_mona.data.unlabeled_pool import resolve_unlabeled_cases
    identifier = PlansManager(os.path.join(source, plans + ".json")).get_configuration(configuration).data_identifier
    with open(os.path.join(source, "splits_final.json")) as f:
        folds = json.load(f)
    entry = folds[fold]
    labeled = sorted(set(entry["train"]) | set(entry["val"]))
    unlabeled = resolve_unlabeled_cases(source, identifier, entry, labeled)
    if os.path.isdir(target):
        shutil.rmtree(target)
    data = os.path.join(target, identifier)
    os.makedirs(data)
    for name in sorted(os.listdir(source)):
        if name.startswith("splits_final") or name in (identifier, identifier + "_unlabeled"):
            continue
        _link(os.path.join(source, name), os.path.join(target, name))
    for case in labeled:
        for suffix in SUFFIXES:
            _link(os.path.join(source, identifier, case + suffix), os.path.join(data, case + suffix))
    return identifier, folds, entry, unlabeled


def pseudo_label(model_folder: str, source: str, target: str, plans: str, configuration: str, fold: int,
                 device: str, use_mirroring: bool, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Steps 2 of the module docstring; returns the record (wall time, counts, pseudo-label class fractions).
    ``progress(done, total)`` is called after every 10th case and the last."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_pickle, write_pickle
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunet_mona.cli import configure_ext_trainer_in_process
    from nnunet_mona.data.unlabeled_pool import UnlabeledImageDataset

    start = time.time()
    configure_ext_trainer_in_process()
    identifier, folds, entry, unlabeled = prepare_dataset(source, target, plans, configuration, fold)
    data = os.path.join(target, identifier)
    torch_device = torch.device(device)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=torch_device.type == "cuda", device=torch_device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(os.path.dirname(model_folder), use_folds=(fold,),
                                                   checkpoint_name="checkpoint_final.pth")
    labels = predictor.label_manager
    images = UnlabeledImageDataset(unlabeled)
    voxels: Dict[int, int] = {}
    for done, case in enumerate(images.identifiers, start=1):
        image = torch.from_numpy(np.asarray(images.load_image(case)[:], dtype=np.float32))
        with torch.no_grad():
            logits = predictor.predict_logits_from_preprocessed_data(image)
        seg = np.asarray(labels.convert_logits_to_segmentation(logits.float())).astype(np.int16)[None]
        properties = load_pickle(os.path.join(unlabeled[case], case + ".pkl"))  # geometry; labels never
        properties.pop("is_unlabeled", None)
        properties["class_locations"] = DefaultPreprocessor._sample_foreground_locations(
            seg, labels.foreground_labels)
        properties["pseudo_label"] = True
        _write_seg(seg, os.path.join(data, case + "_seg.b2nd"), predictor.configuration_manager.patch_size)
        write_pickle(properties, os.path.join(data, case + ".pkl"))
        _link(images.image_path(case), os.path.join(data, case + ".b2nd"))
        for value, count in zip(*np.unique(seg, return_counts=True)):
            voxels[int(value)] = voxels.get(int(value), 0) + int(count)
        if progress is not None and (done % 10 == 0 or done == len(images.identifiers)):
            progress(done, len(images.identifiers))
    with open(os.path.join(target, "splits_final.json"), "w") as f:
        json.dump(_derived_split(folds, fold, images.identifiers), f, indent=2)
    total = max(1, sum(voxels.values()))
    checkpoint = os.path.join(model_folder, "checkpoint_final.pth")
    return {"wall_seconds": round(time.time() - start, 1), "model": checkpoint,
            "model_mtime": os.path.getmtime(checkpoint), "n_labeled_cases": len(entry["train"]),
            "n_pseudo_labeled_cases": len(images.identifiers), "pseudo_labeled_cases": images.identifiers,
            "pseudo_label_voxel_fraction": {str(k): v / total for k, v in sorted(voxels.items())},
            "device": device, "mirroring": use_mirroring}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nnunet_mona.benchmark.self_training",
        description="Pseudo-label a fold's unlabeled cases with a trained nnU-Net model and write a preprocessed "
                    "dataset + split that train on labeled + pseudo-labeled cases (the benchmark's SelfTraining row).")
    parser.add_argument("--model", required=True, help="fold folder of the trained model (checkpoint_final.pth)")
    parser.add_argument("--source", required=True, help="preprocessed dataset folder with the fold's splits_final.json")
    parser.add_argument("--target", required=True, help="derived preprocessed dataset folder to (re)write")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    parser.add_argument("-c", default="2d", help="configuration. Default: 2d")
    parser.add_argument("-f", type=int, default=0, help="fold. Default: 0")
    parser.add_argument("-device", default="cpu", help="device. Default: cpu")
    parser.add_argument("--disable_tta", action="store_true", help="predict without mirroring")
    parser.add_argument("--record", required=True, help="JSON record written when everything is done")
    args = parser.parse_args(argv)
    record = pseudo_label(args.model, args.source, args.target, args.p, args.c, args.f, args.device,
                          not args.disable_tta)
    save_json(record, args.record)


if __name__ == "__main__":
    main()
