"""The property the package exists for (issue #12): where the unlabeled images carry what the labeled ones
lack, Mean Teacher ends clearly above plain nnU-Net trained on the same labeled cases with the same budget,
on held-out test patients, and the same trainer with its unsupervised weights at 0 does not.

The problem (the demo's scenario in miniature, nnunet_mona.demo.synthetic_dataset): the labeled patients all
come from one scanner; the unlabeled and the test patients from scanners up to ``scanner_shift`` away, whose
images plain nnU-Net's augmentation does not imitate. Everything is real nnU-Net on the CPU:
nnUNetv2_plan_and_preprocess, nnUNetv2_mona_preprocess_unlabeled, nnUNetv2_train (single-process
augmentation, seeded: repeatable), nnUNetv2_predict, nnU-Net's compute_metrics.
"""
import os
import sys
from typing import Dict

import pytest

from conftest import _plan_and_preprocess, run_cmd
from nnunet_mona.demo.evaluation import dice_row, evaluate_folder
from nnunet_mona.demo.pipeline import class_names
from nnunet_mona.demo.synthetic_dataset import write_synthetic_dataset

# Not in the default run yet (issue #12 stays open): Mean Teacher's gain here is within its own run-to-run spread.
# Measured with this file's harness (/work/exp/gain/tune.py, 10 x 25 iterations, CPU, session 5), mean Dice of
# cavity and wall in %: default scenario (SCANNER_EFFECT as in the demo) dataset seed 0: plain 84.5 vs Mean Teacher
# 88.2; with 1 labeled patient, dataset seeds 0 / 1 / 2: plain 83.3 / 64.8 / 85.2 vs 90.1 / 64.2 / 85.9. A milder
# shift that keeps the wall visible (wall -0.08, cavity -0.10, noise +0.10 per unit), 2 labeled patients,
# dataset seeds 0 / 1 / 2: plain 83.6 / 85.2 / 81.4 vs 87.9 / 81.2 / 81.2; on dataset seed 1 with training seeds
# 0 / 1 / 2: plain 85.2 / 84.6 / 84.9, Mean Teacher 81.2 / 86.8 / 84.0 (a 5.6-point spread). Run it with
# NNUNET_MONA_SLOW_TESTS=1.
pytestmark = pytest.mark.skipif(os.environ.get("NNUNET_MONA_SLOW_TESTS") != "1",
                                reason="semi-supervised gain test: Mean Teacher's gain is within its run-to-run spread (issue #12); "
                                       "NNUNET_MONA_SLOW_TESTS=1 runs it")

GAIN_ID = 984
NAME = "MonaGain"
SCENARIO = dict(n_labeled_patients=2, n_unlabeled_patients=16, n_test_patients=4, n_slices=2, size=(48, 48),
                scanner_shift=1.0, lesion_probability=0.0, seed=0)
BUDGET = {"nnUNet_mona_epochs": "10", "nnUNet_mona_iterations": "25", "nnUNet_mona_val_iterations": "1"}
MARGIN = 0.05  # mean Dice of cavity and wall (0-1)
SCORED = ("cavity", "wall")
UNSUPERVISED_OFF = '{"unsup": 0, "unsup_dice": 0}'


def _bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def prepare(raw: str, **scenario) -> Dict[str, list]:
    """Writes the dataset under ``raw`` and plans / preprocesses it (labeled and unlabeled)."""
    roles = write_synthetic_dataset(raw, dataset_id=GAIN_ID, dataset_name=NAME, **scenario)
    _plan_and_preprocess(GAIN_ID)
    run_cmd([_bin("nnUNetv2_mona_preprocess_unlabeled"), "-d", str(GAIN_ID), "-c", "2d", "-np", "1", "--no_pbar"])
    return roles


def train_predict_score(trainer: str, results: str, predictions: str, extra_env: Dict[str, str] = None,
                        budget: Dict[str, str] = None) -> Dict[str, float]:
    """Trains ``trainer`` (fold 'all' = every labeled case) into ``results``, predicts imagesTs into
    ``predictions`` and returns nnU-Net's Dice per class and 'mean' (0-1) on the test patients."""
    env = {**os.environ, "nnUNet_results": results, "nnUNet_n_proc_DA": "0", "nnUNet_mona_seed": "0",
           "nnUNet_mona_skip_validation": "1", **(budget or BUDGET), **(extra_env or {})}
    run_cmd([_bin("nnUNetv2_train"), str(GAIN_ID), "2d", "all", "-tr", trainer, "-device", "cpu"], env=env)
    raw = os.path.join(os.environ["nnUNet_raw"], f"Dataset{GAIN_ID}_{NAME}")
    run_cmd([_bin("nnUNetv2_predict"), "-i", os.path.join(raw, "imagesTs"), "-o", predictions, "-d", str(GAIN_ID),
             "-c", "2d", "-f", "all", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "0", "-nps", "0",
             "--disable_progress_bar"], env=env)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], f"Dataset{GAIN_ID}_{NAME}")
    summary = evaluate_folder(predictions, os.path.join(raw, "labelsTs"), os.path.join(raw, "dataset.json"),
                              os.path.join(pre, "nnUNetPlans.json"))
    row = dice_row(summary, class_names())
    row["mean"] = sum(row[c] for c in SCORED) / len(SCORED)
    return row


@pytest.fixture(scope="module")
def scores(nnunet_dirs, tmp_path_factory):
    prepare(nnunet_dirs["raw"], **SCENARIO)
    root = tmp_path_factory.mktemp("gain")
    runs = {"plain": ("nnUNetTrainerBudget", {}), "mean_teacher": ("nnUNetTrainerMeanTeacher", {}),
            "unsupervised_off": ("nnUNetTrainerMeanTeacher", {"nnUNet_mona_loss_weights": UNSUPERVISED_OFF})}
    out = {tag: train_predict_score(trainer, str(root / f"results_{tag}"), str(root / f"pred_{tag}"), env)
           for tag, (trainer, env) in runs.items()}
    print("\n" + "\n".join(f"{tag:18s} " + " ".join(f"{k} {v:.3f}" for k, v in row.items() if v is not None)
                           for tag, row in out.items()))
    return out


def test_mean_teacher_clearly_beats_plain_nnunet(scores):
    assert scores["mean_teacher"]["mean"] >= scores["plain"]["mean"] + MARGIN, scores


def test_the_gain_comes_from_the_unsupervised_path(scores):
    # the same trainer, data, batch and budget with the unsupervised weights at 0: no clear gain over plain, and
    # clearly below the full trainer
    assert scores["unsupervised_off"]["mean"] < scores["plain"]["mean"] + MARGIN / 2, scores
    assert scores["mean_teacher"]["mean"] >= scores["unsupervised_off"]["mean"] + MARGIN, scores
