"""``nnUNetv2_mona_pseudo_label`` end to end: plain model -> pseudo-labels of the fold's unlabeled cases in a derived
dataset under another nnUNet_preprocessed root -> the printed ``nnUNetv2_train`` command trains on it. The unlabeled
cases' real labels are moved away first (reading one would fail), and the original dataset is never written."""
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from batchgenerators.utilities.file_and_folder_operations import join

from conftest import run_cmd, write_identical_folds

BIN = os.path.dirname(sys.executable)
FOLD = 5
TRAINER = "nnUNetTrainerBudget"


def _budget_env(**extra):
    env = os.environ.copy()
    env.update({"nnUNet_mona_epochs": "1", "nnUNet_mona_iterations": "2", "nnUNet_mona_val_iterations": "1",
                "nnUNet_mona_skip_validation": "1", **extra})
    return env


def _command(*args):
    return [join(BIN, "nnUNetv2_mona_pseudo_label"), *map(str, args)]


def _refused(cmd, env=None):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                          env=env or os.environ.copy())
    assert proc.returncode != 0, proc.stdout
    return proc.stdout


@pytest.fixture(scope="module")
def trained_plain(simulated_scarcity_dataset, tmp_path_factory):
    ds = simulated_scarcity_dataset
    pre = write_identical_folds(ds, FOLD + 1)
    labeled, unlabeled = ds["roles"]["labeled"], ds["roles"]["unlabeled"]
    hidden = str(tmp_path_factory.mktemp("hidden_labels"))
    moved = []
    for case in unlabeled:
        seg = join(pre, "nnUNetPlans_2d", f"{case}_seg.b2nd")
        if os.path.exists(seg):
            shutil.move(seg, hidden)
            moved.append(case)
    run_cmd([join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", str(FOLD), "-tr", TRAINER, "-device", "cpu"],
            env=_budget_env())
    yield {"ds": ds, "pre": pre, "unlabeled": unlabeled, "labeled": labeled}
    for case in moved:  # other modules of this worker may expect them
        shutil.move(join(hidden, f"{case}_seg.b2nd"), join(pre, "nnUNetPlans_2d"))


def test_pseudo_labels_train_with_the_printed_command(trained_plain, tmp_path):
    ds, pre = trained_plain["ds"], trained_plain["pre"]
    before = sorted(os.listdir(join(pre, "nnUNetPlans_2d")))
    out_root = str(tmp_path / "pre_pseudo")
    output = run_cmd(_command("-d", ds["id"], "-o", out_root, "-f", FOLD, "-tr", TRAINER, "-device", "cpu",
                              "--disable_tta"))
    target = join(out_root, ds["name"])
    assert f"{len(trained_plain['unlabeled'])}/{len(trained_plain['unlabeled'])} cases" in output
    split = json.load(open(join(target, "splits_final.json")))[FOLD]
    assert sorted(split["train"]) == sorted(trained_plain["labeled"] + trained_plain["unlabeled"])
    assert split["unlabeled"] == []
    for case in trained_plain["unlabeled"]:
        assert os.path.isfile(join(target, "nnUNetPlans_2d", f"{case}_seg.b2nd")), case
    assert sorted(os.listdir(join(pre, "nnUNetPlans_2d"))) == before  # the original dataset is untouched
    assert json.load(open(join(target, "pseudo_label_record.json")))["n_pseudo_labeled_cases"] == \
        len(trained_plain["unlabeled"])

    # the printed self-training command runs as printed (its variables, then nnUNetv2_train)
    line = next(l.strip() for l in output.splitlines() if "nnUNetv2_train" in l and "nnUNet_preprocessed=" in l)
    words = shlex.split(line)
    variables = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    command = [w for w in words if w not in {f"{k}={v}" for k, v in variables.items()}]
    run_cmd([join(BIN, command[0])] + command[1:] + ["-device", "cpu"], env=_budget_env(**variables))
    retrained = join(variables["nnUNet_results"], ds["name"], f"{TRAINER}__nnUNetPlans__2d", f"fold_{FOLD}",
                     "checkpoint_final.pth")
    assert os.path.isfile(retrained)
    assert retrained in output  # the Mean Teacher line starts from that model

    # a second run replaces its own folder without --overwrite
    run_cmd(_command("-d", ds["id"], "-o", out_root, "-f", FOLD, "-tr", TRAINER, "-device", "cpu", "--disable_tta"))


def test_bad_input_is_refused_before_anything_is_written(trained_plain, tmp_path):
    ds = trained_plain["ds"]
    # -o at the user's own nnUNet_preprocessed would replace the original dataset
    message = _refused(_command("-d", ds["id"], "-o", ds["preprocessed"], "-f", FOLD, "-tr", TRAINER, "-device",
                                "cpu"))
    assert "is your nnUNet_preprocessed folder" in message
    # no trained model: says how to train it
    message = _refused(_command("-d", ds["id"], "-o", str(tmp_path / "x"), "-f", FOLD, "-tr",
                                "nnUNetTrainerMeanTeacher", "-device", "cpu"))
    assert "No trained model" in message and "nnUNetv2_train" in message
    assert not os.path.exists(tmp_path / "x")
    # a folder the command did not write stays as it is
    foreign = tmp_path / "foreign" / ds["name"]
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("keep")
    message = _refused(_command("-d", ds["id"], "-o", str(tmp_path / "foreign"), "-f", FOLD, "-tr", TRAINER,
                                "-device", "cpu"))
    assert "was not written by this command" in message and (foreign / "mine.txt").read_text() == "keep"
