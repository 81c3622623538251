"""Which test slices ``comparison.png`` shows: those where the trainers differ most.

Per test case and slice, each trainer's Dice against the ground truth is averaged over the foreground classes
present in the ground truth or in that trainer's prediction on that slice (a class absent from both is skipped, as
in nnU-Net's evaluation). A trainer that rightly predicts nothing on a slice where another trainer predicts
something scores 1 there. Slices without foreground in the ground truth and in every prediction are skipped.
The spread of a slice is max - min of its trainers' Dice; the figure shows the slices with the largest spread,
at most one per case (so that one bad case cannot fill the figure), ties broken by case id, then slice index.
These slices are chosen from the predictions to show where the trainers disagree: they are not typical slices.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

SliceKey = Tuple[str, int]  # (case id, slice index)


def read_volume(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path))  # (Z, Y, X)


def slice_dice(reference: np.ndarray, prediction: np.ndarray, labels: Sequence[int]) -> Optional[float]:
    """Mean Dice over the ``labels`` present in ``reference`` or ``prediction`` (label maps of one shape, e.g. one
    slice (Y, X)); None when none of them is."""
    values = []
    for label in labels:
        ref, pred = reference == label, prediction == label
        size = int(ref.sum()) + int(pred.sum())
        if size:  # absent from both: skipped, not counted as a perfect 1
            values.append(2.0 * int(np.logical_and(ref, pred).sum()) / size)
    return float(np.mean(values)) if values else None


def per_slice_dice(label_folder: str, prediction_folders: Dict[str, str], file_ending: str,
                   labels: Sequence[int]) -> Dict[SliceKey, Dict[str, float]]:
    """{(case id, slice index): {trainer: Dice on that slice}} for every case in ``label_folder`` ((Z, Y, X)
    volumes, predictions under the same file name in each of ``prediction_folders``) and every slice with
    foreground in the ground truth or in some prediction."""
    result = {}
    cases = sorted(f[:-len(file_ending)] for f in os.listdir(label_folder) if f.endswith(file_ending))
    for case in cases:
        reference = read_volume(os.path.join(label_folder, case + file_ending))
        predictions = {t: read_volume(os.path.join(folder, case + file_ending))
                       for t, folder in prediction_folders.items()}
        for z in range(reference.shape[0]):
            dice = {t: slice_dice(reference[z], p[z], labels) for t, p in predictions.items()}
            if all(v is None for v in dice.values()):
                continue  # nothing in the ground truth and nothing predicted: no difference to show
            # None here: this trainer and the ground truth are empty while another trainer predicts something
            result[(case, z)] = {t: 1.0 if v is None else v for t, v in dice.items()}
    return result


def spread(dice: Dict[str, float]) -> float:
    """max - min of one slice's Dice over the trainers."""
    return max(dice.values()) - min(dice.values())


def choose_slices(dice: Dict[SliceKey, Dict[str, float]], num_rows: int = 3) -> List[SliceKey]:
    """Up to ``num_rows`` keys of ``dice`` (per_slice_dice's result): largest spread first, at most one slice per
    case; equal spreads in the order of (case id, slice index)."""
    best = {}
    for key in sorted(dice):  # sorted: of a case's equal spreads the lowest slice index stays
        if key[0] not in best or spread(dice[key]) > spread(dice[best[key[0]]]):
            best[key[0]] = key
    return sorted(best.values(), key=lambda key: (-spread(dice[key]), key))[:num_rows]
