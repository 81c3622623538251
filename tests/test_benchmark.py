"""nnUNetv2_mona_benchmark / nnUNetv2_mona_evaluate: metric properties (fast) and one tiny end-to-end run on CPU
(plan -> train 2 trainers x 2 labeled counts -> predict -> evaluate -> report), then a resume that skips everything."""
import json
import os
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.distance import cdist

from conftest import run_cmd
from nnunet_mona.benchmark.evaluate import class_metrics, evaluate_folders, markdown_table, summarize
from nnunet_mona.benchmark.surface_metrics import asd, dice, hd95, surface, surface_distances

BIN = os.path.dirname(sys.executable)


# ------------------------------------------------------------------------------------------------ metrics
def _sheet(x: int, shape=(6, 20, 20)) -> np.ndarray:
    """A 4 x 10 square sheet, one voxel thick in x, at column ``x``."""
    m = np.zeros(shape, bool)
    m[1:5, 5:15, x] = True
    return m


def test_identical_masks():
    m = np.zeros((4, 16, 16), bool)
    m[1:3, 4:10, 3:12] = True
    assert dice(m, m) == 1.0 and hd95(m, m) == 0.0 and asd(m, m) == 0.0
    r = class_metrics(m, m, (5.0, 1.0, 1.0))
    assert r["mona"] == {"dice": 1.0, "hd95": 0.0, "asd": 0.0}
    assert r["mm"] == {"dice": 1.0, "hd95": 0.0, "asd": 0.0}


@pytest.mark.parametrize("shift", [1, 3])
def test_shifted_square_in_voxels_and_mm(shift):
    # a square sheet shifted perpendicular to itself: every surface voxel is exactly `shift` voxels from the other
    pred, gt = _sheet(4 + shift), _sheet(4)
    assert asd(pred, gt) == pytest.approx(shift) and hd95(pred, gt) == pytest.approx(shift)
    spacing = (5.0, 0.7, 1.5)  # array-axis order (z, y, x): the shift is along x
    assert asd(pred, gt, spacing) == pytest.approx(shift * 1.5)
    assert hd95(pred, gt, spacing) == pytest.approx(shift * 1.5)
    r = class_metrics(pred, gt, spacing)
    assert r["mona"]["asd"] == pytest.approx(shift) and r["mm"]["asd"] == pytest.approx(1.5 * shift)
    assert r["mona"]["dice"] == 0.0


def test_surface_distances_match_brute_force():
    """EDT-based distances equal the brute-force nearest-surface-voxel distances (filled, shifted 2D squares)."""
    gt = np.zeros((30, 30), bool)
    gt[5:20, 6:18] = True
    pred = np.roll(gt, (2, 3), axis=(0, 1))
    assert surface(gt).sum() == 2 * 15 + 2 * 12 - 4  # the outline only
    spacing = (2.0, 0.5)
    a = np.argwhere(surface(pred)) * spacing
    b = np.argwhere(surface(gt)) * spacing
    brute = cdist(a, b).min(1)
    assert np.allclose(np.sort(surface_distances(pred, gt, spacing)), np.sort(brute))
    back = cdist(b, a).min(1)
    assert hd95(pred, gt, spacing) == pytest.approx(np.percentile(np.concatenate([brute, back]), 95))
    assert asd(pred, gt, spacing) == pytest.approx(brute.mean())  # one direction, like medpy's asd


def test_mona_special_cases():
    empty, m = np.zeros((3, 8, 8), bool), np.zeros((3, 8, 8), bool)
    m[1, 2:5, 2:5] = True
    fp = class_metrics(m, empty, (1, 1, 1))  # prediction non-empty, reference empty
    assert fp["mona"] == {"dice": 1.0, "hd95": 0.0, "asd": 0.0}
    assert fp["mm"]["dice"] == 0.0 and np.isnan(fp["mm"]["hd95"]) and np.isnan(fp["mm"]["asd"])
    miss = class_metrics(empty, m, (1, 1, 1))  # prediction empty
    assert miss["mona"] == {"dice": 0.0, "hd95": 0.0, "asd": 0.0}
    both = class_metrics(empty, empty, (1, 1, 1))
    assert both["mona"] == {"dice": 0.0, "hd95": 0.0, "asd": 0.0} and np.isnan(both["mm"]["dice"])


def test_class_wise_then_volume_averaging():
    """Class means over volumes first (undefined values left out), then the mean over classes."""
    nan = float("nan")

    def entry(d_mona, d_mm):
        return {"mona": {"dice": d_mona, "hd95": 0.0, "asd": 0.0}, "mm": {"dice": d_mm, "hd95": nan, "asd": nan}}

    per_volume = {"a": {1: entry(1.0, 1.0), 2: entry(0.0, nan)},  # class 2 absent from both masks of volume a
                  "b": {1: entry(0.5, 0.5), 2: entry(0.6, 0.6)}}
    s = summarize(per_volume, [1, 2], ["A", "B"])
    assert s["mona"]["per_class"]["B"]["dice"] == pytest.approx(0.3)
    assert s["mona"]["mean"]["dice"] == pytest.approx((0.75 + 0.3) / 2)
    assert s["mm"]["per_class"]["B"]["dice"] == pytest.approx(0.6)
    # per-volume-first would give mean(1.0, 0.55) = 0.775; class-wise first gives mean(0.75, 0.6) = 0.675
    assert s["mm"]["mean"]["dice"] == pytest.approx(0.675)
    assert s["mm"]["undefined"]["B"] == {"dice": 1, "hd95": 2, "asd": 2}
    assert s["mm"]["mean"]["hd95"] is None


def test_evaluate_folders_and_command(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt = np.zeros((3, 20, 20), np.uint8)
    gt[1, 5:10, 5:10] = 1
    gt[0:2, 12:18, 3:6] = 2
    pred = gt.copy()
    pred[pred == 2] = 0  # class 2 missed entirely
    for folder, arr in ((gt_dir, gt), (pred_dir, pred)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 4.0))
        sitk.WriteImage(img, str(folder / "case1.nii.gz"))
    r = evaluate_folders(str(pred_dir), str(gt_dir), names=None)
    assert r["labels"] == {"1": 1, "2": 2}
    assert r["summary"]["mona"]["per_class"]["1"] == {"dice": 1.0, "hd95": 0.0, "asd": 0.0}
    assert r["summary"]["mona"]["per_class"]["2"] == {"dice": 0.0, "hd95": 0.0, "asd": 0.0}
    assert r["summary"]["mm"]["undefined"]["2"]["hd95"] == 1
    assert "| **mean** | 50.0 |" in markdown_table(r)
    out = run_cmd([os.path.join(BIN, "nnUNetv2_mona_evaluate"), "-p", str(pred_dir), "-g", str(gt_dir),
                   "-o", str(tmp_path / "m.json"), "--labels", "1", "2", "--names", "RV", "MYO"])
    assert "| RV | 100.0 |" in out
    assert json.load(open(tmp_path / "m.json"))["per_volume"]["case1"]["MYO"]["mm"]["hd95"] is None
