"""The demo end to end (nnUNetv2_mona_demo's pipeline) with a tiny dataset and budget: the table, the JSON and
the figure are written, with one row per trainer and Dice values in [0, 1]; a re-run skips finished steps."""
import json
import os

import pytest

from nnunet_mona.demo import pipeline
from nnunet_mona.demo.console import DemoError, TrainingProgress
from nnunet_mona.demo.evaluation import dice_rows_by_group
from nnunet_mona.demo.run_demo import DEFAULT_TRAINERS, build_parser, main, settings_from_args

# everything the demo sets in os.environ; restored after the test (other tests use their own folders)
DEMO_ENV_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_n_proc_DA",
                 "nnUNet_def_n_proc", "nnUNet_compile", "OMP_WAIT_POLICY", "nnUNet_mona_skip_validation")
TINY = ["--quick", "--epochs", "1", "--iterations", "2", "--num_unlabeled", "2", "--num_test", "1",
        "--device", "cpu"]


@pytest.fixture
def isolated_env(monkeypatch):
    for var in DEMO_ENV_VARS:
        was_set = var in os.environ
        monkeypatch.setenv(var, os.environ.get(var, ""))  # records the original value (or its absence)
        if not was_set:
            monkeypatch.delenv(var)
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    return monkeypatch


def test_demo_end_to_end(tmp_path, isolated_env):
    work = tmp_path / "demo"
    result = main(TINY + ["-o", str(work)])

    for name in ("results.md", "results.json", "comparison.png"):
        assert (work / name).is_file() and (work / name).stat().st_size > 0, name
    with open(work / "results.json") as f:
        results = json.load(f)
    classes = list(pipeline.class_names().values())
    # the presets have no lesion patients: the dataset (and the table) has no lesion class
    assert classes[-1] == "lesion"
    classes = classes[:-1]
    assert results["classes"] == classes
    assert list(results["dice"]) == DEFAULT_TRAINERS
    for trainer, row in results["dice"].items():
        assert set(row) == set(classes) | {"mean"}
        assert row["mean"] is not None
        for value in row.values():
            assert value is None or 0.0 <= value <= 1.0, (trainer, row)
    table = (work / "results.md").read_text()
    assert all(f"`{t}`" in table for t in DEFAULT_TRAINERS)
    assert result["dice"] == results["dice"]
    # the record states the fold that ran (fold 'all'), not a 5-fold split that never ran
    assert "fold 'all'" in results["protocol"]["labeled cases"] and "4/5" not in json.dumps(results["protocol"])
    # fold 'all' validates on training cases: the demo skips that validation (nnUNet_mona_skip_validation)
    for trainer in DEFAULT_TRAINERS:
        fold = work / "nnUNet_results" / "Dataset980_MonaDemo" / f"{trainer}__nnUNetPlans__2d" / "fold_all"
        assert (fold / "checkpoint_final.pth").is_file()
        assert not (fold / "validation").exists(), trainer
        log = next(fold.glob("training_log_*.txt")).read_text()
        assert "final validation skipped" in log

    # Dice by scanner distance: every test case in exactly one group; a group holding all of them repeats the table
    by_group = results["dice_by_group"]
    with open(work / "nnUNet_raw" / "demo_roles.json") as f:
        test_cases = json.load(f)["test"]
    assert sorted(by_group["cases"]["near"] + by_group["cases"]["far"]) == sorted(test_cases)
    assert "near" in table and "far" in table
    for trainer, row in results["dice"].items():
        for group, cases in by_group["cases"].items():
            if len(cases) == len(test_cases):
                assert by_group["dice"][trainer][group] == row, (trainer, group)

    # a second run continues: training and prediction are skipped, the results are the same
    again = main(TINY + ["-o", str(work)])
    assert again["dice"] == results["dice"]
    assert again["timings"]["train nnUNetTrainerMeanTeacher_randomStart"] < 30

    # another dataset in the same folder is refused, nothing is deleted
    with pytest.raises(DemoError, match="other settings"):
        main(TINY + ["-o", str(work), "--seed", "1"])
    assert (work / "results.json").is_file()


def test_demo_refuses_foreign_folder(tmp_path, isolated_env):
    (tmp_path / "my_file.txt").write_text("not a demo")
    with pytest.raises(DemoError, match="not a demo folder"):
        main(TINY + ["-o", str(tmp_path)])
    assert (tmp_path / "my_file.txt").is_file()


def test_settings_validation():
    with pytest.raises(DemoError, match="num_labeled"):
        settings_from_args(build_parser().parse_args(["--num_labeled", "0", "--device", "cpu"]))
    with pytest.raises(DemoError, match="unlabeled"):
        settings_from_args(build_parser().parse_args(["--num_unlabeled", "0", "--device", "cpu"]))
    s = settings_from_args(build_parser().parse_args(["--quick", "--epochs", "3", "--device", "cpu"]))
    assert s.training.epochs == 3 and s.work_dir.endswith("nnunet_mona_demo_quick") and not s.tta
    assert s.dataset.scanner_shift == 1.0 and s.dataset.lesion_probability == 0.0
    for bad in (["--scanner_shift", "1.5"], ["--scanner_shift", "-0.1"], ["--lesion_probability", "2"]):
        with pytest.raises(DemoError, match=bad[0]):
            settings_from_args(build_parser().parse_args(bad + ["--device", "cpu"]))


def test_training_progress_lines():
    progress = TrainingProgress("[MeanTeacher]", 10)
    lines = ["2026-01-01 10:00:00.000001: Epoch 2", "2026-01-01 10:00:00.000002: Current learning rate: 0.008",
             "2026-01-01 10:00:01.000000: loss terms {'sup': 0.5, 'unsup': 0.0123, 'confident_fraction': 0.8, "
             "'skipped_steps': 0.0} (unsupervised ramp 1.000)",
             "2026-01-01 10:00:01.000001: train_loss -0.4123",
             "2026-01-01 10:00:01.000002: val_loss -0.52",
             "2026-01-01 10:00:01.000003: Pseudo dice [np.float32(0.9101), np.float32(0.6234), np.float32(nan)]",
             "2026-01-01 10:00:01.000004: Epoch time: 12.3 s"]
    printed = [x for x in (progress(line) for line in lines) if x is not None]
    assert printed == ["[MeanTeacher] epoch   3/10  train_loss -0.4123  val_loss -0.52  pseudo Dice 0.91 0.62 n/a  "
                       "unsup 0.012  confident_fraction 0.800  12.3s"]
    assert progress("Traceback (most recent call last):") == "[MeanTeacher] Traceback (most recent call last):"


def test_dice_by_group_averages_each_groups_cases():
    """dice_rows_by_group: per class the mean over the group's cases, NaN cases (class absent from reference and
    prediction) left out, mean over the classes present; computed by hand."""
    nan = float("nan")
    summary = {"metric_per_case": [
        {"reference_file": "/x/labelsTs/a.nii.gz", "metrics": {"1": {"Dice": 0.9}, "2": {"Dice": 0.5}}},
        {"reference_file": "/x/labelsTs/b.nii.gz", "metrics": {"1": {"Dice": 0.7}, "2": {"Dice": nan}}},
        {"reference_file": "/x/labelsTs/c.nii.gz", "metrics": {"1": {"Dice": 0.2}, "2": {"Dice": 0.4}}}]}
    rows = dice_rows_by_group(summary, {1: "cavity", 2: "wall"}, {"near": ["a", "b"], "far": ["c"], "none": []})
    assert rows["near"] == {"cavity": 0.8, "wall": 0.5, "mean": 0.65}
    assert rows["far"] == {"cavity": 0.2, "wall": 0.4, "mean": 0.3}
    assert rows["none"] == {"cavity": None, "wall": None, "mean": None}
