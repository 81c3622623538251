"""The demo's comparison.png without training: the slice selection (per-slice Dice, largest spread between the
trainers, at most one slice per case, empty slices skipped) on tiny synthetic .nii.gz files, and the figure's bar
chart (one bar per class and trainer, legend over no bar)."""
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mona.demo.slice_selection import choose_slices, per_slice_dice, slice_dice, spread

CLASSES = {1: "cavity", 2: "wall"}
ENDING = ".nii.gz"


def _write(volume: np.ndarray, path: str) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(volume), path)  # (Z, Y, X)


def _ground_truth(z_slices: int = 3) -> np.ndarray:
    """(Z, 8, 8): a 'wall' ring around a 2x2 'cavity' on every slice."""
    seg = np.zeros((z_slices, 8, 8), dtype=np.uint8)
    seg[:, 2:6, 2:6] = 2
    seg[:, 3:5, 3:5] = 1
    return seg


@pytest.fixture
def demo_folders(tmp_path):
    """Cases a, b, c (3 slices of 8x8); trainer A predicts the ground truth. Trainer B misses the cavity on
    slice 1 of case b (the largest difference), one wall pixel on slice 0 of case a and one on slices 0 and 2 of
    case c (equal, small differences). Case a's slice 2 is empty in the ground truth and in both predictions."""
    folders = {name: tmp_path / name for name in ("images", "labels", "A", "B")}
    for folder in folders.values():
        folder.mkdir()
    for case in ("a", "b", "c"):
        gt = _ground_truth()
        if case == "a":
            gt[2] = 0
        wrong = gt.copy()
        if case == "a":
            wrong[0, 2, 2] = 0
        elif case == "b":
            wrong[1][wrong[1] == 1] = 2
        else:
            wrong[0, 2, 2] = wrong[2, 2, 2] = 0
        _write(gt, str(folders["labels"] / (case + ENDING)))
        _write(gt, str(folders["A"] / (case + ENDING)))
        _write(wrong, str(folders["B"] / (case + ENDING)))
        _write(np.random.default_rng(0).normal(size=gt.shape).astype(np.float32),
               str(folders["images"] / f"{case}_0000{ENDING}"))
    return {k: str(v) for k, v in folders.items()}


def test_slice_dice_by_hand():
    ref = np.zeros((4, 4), dtype=np.uint8)
    ref[0, :] = 1  # cavity: 4 pixels
    ref[3, 0] = 2  # wall: 1 pixel, missed below
    pred = np.zeros_like(ref)
    pred[0, :2] = 1
    pred[1, :2] = 1  # cavity: 2 of 4 right, 2 false positives -> 2 * 2 / (4 + 4) = 0.5
    # class 3 is absent from both: skipped (else the mean would be (0.5 + 0 + 1) / 3)
    assert slice_dice(ref, pred, [1, 2, 3]) == pytest.approx((0.5 + 0.0) / 2)
    assert slice_dice(ref, ref, [1, 2, 3]) == 1.0
    assert slice_dice(np.zeros_like(ref), np.zeros_like(ref), [1, 2]) is None


def test_per_slice_dice_values_and_empty_slice(demo_folders):
    predictions = {"A": demo_folders["A"], "B": demo_folders["B"]}
    dice = per_slice_dice(demo_folders["labels"], predictions, ENDING, sorted(CLASSES))
    assert ("a", 2) not in dice  # empty in the ground truth and in every prediction
    assert sorted(dice) == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2), ("c", 0), ("c", 1), ("c", 2)]
    assert all(d["A"] == 1.0 for d in dice.values())
    # case b slice 1: B labels the 4 cavity pixels 'wall' -> cavity 0, wall 2 * 12 / (12 + 16)
    assert dice[("b", 1)]["B"] == pytest.approx((0.0 + 24 / 28) / 2)
    # case a slice 0: one of 12 wall pixels missed -> cavity 1, wall 2 * 11 / (12 + 11)
    assert dice[("a", 0)]["B"] == pytest.approx((1.0 + 22 / 23) / 2)
    assert dice[("a", 1)] == {"A": 1.0, "B": 1.0}


def test_false_positive_on_an_empty_slice_counts(tmp_path):
    """A trainer that rightly predicts nothing scores 1 where the other one predicts a class the ground truth
    lacks (spread 1: the largest there is)."""
    for name in ("labels", "A", "B"):
        (tmp_path / name).mkdir()
    empty = np.zeros((2, 4, 4), dtype=np.uint8)
    wrong = empty.copy()
    wrong[1, 0, 0] = 1
    for name, seg in (("labels", empty), ("A", empty), ("B", wrong)):
        _write(seg, str(tmp_path / name / ("x" + ENDING)))
    dice = per_slice_dice(str(tmp_path / "labels"), {"A": str(tmp_path / "A"), "B": str(tmp_path / "B")}, ENDING,
                          sorted(CLASSES))
    assert dice == {("x", 1): {"A": 1.0, "B": 0.0}}


def test_selection_picks_the_slice_where_the_trainers_differ_most(demo_folders):
    predictions = {"A": demo_folders["A"], "B": demo_folders["B"]}
    dice = per_slice_dice(demo_folders["labels"], predictions, ENDING, sorted(CLASSES))
    chosen = choose_slices(dice, num_rows=3)
    assert chosen[0] == ("b", 1)
    # one slice per case; case a and case c (slices 0 and 2) have the same small spread: case id, then slice index
    assert spread(dice[("a", 0)]) == pytest.approx(spread(dice[("c", 0)]))
    assert chosen == [("b", 1), ("a", 0), ("c", 0)]
    assert choose_slices(dice, num_rows=1) == [("b", 1)]


def test_figure_bars_and_legend(demo_folders, tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nnunet_mona.demo.figure import make_comparison_figure
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    rows = {"nnUNetTrainerBudget": {"cavity": 0.98, "wall": 0.85, "mean": 0.915},
            "nnUNetTrainerMeanTeacher": {"cavity": 0.99, "wall": None, "mean": 0.99}}
    predictions = {"nnUNetTrainerBudget": demo_folders["A"], "nnUNetTrainerMeanTeacher": demo_folders["B"]}
    out = str(tmp_path / "comparison.png")
    assert make_comparison_figure(out, demo_folders["images"], demo_folders["labels"], predictions, rows, CLASSES,
                                  ENDING, num_rows=2) == out
    assert os.path.getsize(out) > 0
    fig = figures[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == (len(CLASSES) + 1) * len(rows)  # one per (class or mean, trainer)
    heights = sorted(round(b.get_height(), 6) for b in bars)
    assert heights == sorted([98.0, 85.0, 91.5, 99.0, 0.0, 99.0])  # Dice in %, None drawn as an empty bar
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(["98.0", "85.0", "91.5", "99.0", "n/a", "99.0"])
    legends = [ax.get_legend()] + fig.legends
    assert [t.get_text() for t in legends[0].get_texts()] == ["nnU-Net (labeled only)", "Mean Teacher"]
    for legend in legends:
        box = legend.get_window_extent()
        assert not any(box.overlaps(bar.get_window_extent()) for bar in bars)
    assert len(fig.axes) == 1 + 2 * 4  # bar chart, then 2 slice rows of image, ground truth, 2 trainers
    assert fig.axes[1].get_title() == "b z=1"
    assert "differ most" in fig._suptitle.get_text()
    close(fig)
