"""nnUNetv2_mona_benchmark protocol options: --batch_size (plans copy), --preset, --checkpoint, one protocol per output
folder, the figure's legend, and one end-to-end run of the SelfTraining row on tiny synthetic data whose unlabeled
cases have their labels deleted or poisoned (the row must never read them)."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import _plan_and_preprocess, run_cmd
from nnunet_mona.benchmark.processes import BenchmarkError

BIN = os.path.dirname(sys.executable)
ARCH = {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []}


def _plans():
    return {"dataset_name": "Dataset1_X", "plans_name": "nnUNetPlans",
            "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d", "batch_size": 12, "patch_size": [64, 48],
                                      "spacing": [1.0, 1.0], "architecture": ARCH},
                               "2d_wide": {"inherits_from": "2d", "patch_size": [96, 96]},
                               "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2,
                                              "patch_size": [8, 64, 48], "spacing": [5.0, 1.0, 1.0],
                                              "architecture": ARCH}}}


# ------------------------------------------------------------------------------------------------ plans copy
@pytest.mark.parametrize("configuration, identifier", [("2d", "nnUNetPlans_2d"), ("2d_wide", "nnUNetPlans_2d")])
def test_batch_plans_copy_changes_only_the_batch(tmp_path, configuration, identifier):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_mona.benchmark.plans_copy import batch_plans_name, install_batch_plans
    source = tmp_path / "nnUNetPlans.json"
    source.write_text(json.dumps(_plans()))
    name = batch_plans_name("nnUNetPlans", 8)
    assert name == "nnUNetPlans_bs8"
    target = tmp_path / "target"
    target.mkdir()
    install_batch_plans(str(target), str(source), configuration, 8, name)
    copy = json.loads((target / "nnUNetPlans_bs8.json").read_text())
    assert json.loads(source.read_text()) == _plans()  # the original is untouched
    new, old = PlansManager(copy).get_configuration(configuration), PlansManager(_plans()).get_configuration(configuration)
    assert copy["plans_name"] == name and new.batch_size == 8 and old.batch_size == 12
    assert new.data_identifier == old.data_identifier == identifier  # nothing to preprocess again
    assert new.patch_size == old.patch_size and new.spacing == old.spacing
    assert copy["configurations"]["3d_fullres"] == _plans()["configurations"]["3d_fullres"]


def test_batch_size_below_two_fails_before_any_work(tmp_path):
    from nnunet_mona.benchmark.run_benchmark import build_parser, run
    out = tmp_path / "out"
    args = build_parser().parse_args(["-d", "999", "--epochs", "1", "--iterations", "1", "--batch_size", "1",
                                      "-o", str(out)])
    with pytest.raises(BenchmarkError, match="--batch_size must be at least 2"):
        run(args)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ presets
def _raw_dataset(raw: str, dataset_id: int, labels: dict, **extra) -> None:
    folder = os.path.join(raw, f"Dataset{dataset_id}_Preset{dataset_id}")
    os.makedirs(os.path.join(folder, "imagesTs"), exist_ok=True)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"labels": labels, "channel_names": {"0": "MRI"}, "file_ending": ".nii.gz", **extra}, f)


ACDC_LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}


@pytest.mark.parametrize("preset, dataset_id, labels, extra, message", [
    ("acdc_cpu", 981, {"background": 0, "cavity": 1, "wall": 2, "lesion": 3}, {"inplane_downsample": 2},
     "not ACDC's RV, MYO, LV"),
    ("acdc_cpu", 982, ACDC_LABELS, {}, "inplane_downsample 1, the preset needs 2"),
    ("acdc_cpu_quarter", 983, ACDC_LABELS, {"inplane_downsample": 2}, "inplane_downsample 2, the preset needs 4.*"
                                                                       "--downsample 4"),
])
def test_preset_refuses_a_dataset_it_does_not_fit(nnunet_dirs, tmp_path, preset, dataset_id, labels, extra, message):
    from nnunet_mona.benchmark.run_benchmark import build_parser, run
    _raw_dataset(nnunet_dirs["raw"], dataset_id, labels, **extra)
    out = tmp_path / "out"
    with pytest.raises(BenchmarkError, match=message):
        run(build_parser().parse_args(["--preset", preset, "-d", str(dataset_id), "-o", str(out)]))
    assert not out.exists()


def test_preset_fills_only_unset_options():
    from nnunet_mona.benchmark.presets import PRESETS, check_dataset_for_preset
    from nnunet_mona.benchmark.presets import apply_preset
    from nnunet_mona.benchmark.run_benchmark import build_parser
    args = build_parser().parse_args(["--preset", "acdc_cpu", "--epochs", "5", "--no-disable_tta", "--labeled", "1"])
    used = apply_preset(args)
    assert (args.epochs, args.disable_tta, args.labeled) == (5, False, [1])  # explicit flags win
    p = PRESETS["acdc_cpu"]
    assert (args.d, args.batch_size, args.iterations, args.val_iterations, args.device, args.seed) == \
        (p["d"], 8, 50, 5, "cpu", 0) and args.trainers == p["trainers"]
    assert "epochs" not in used and "batch_size" in used
    plain = build_parser().parse_args(["-d", "5", "--epochs", "1", "--iterations", "2"])
    apply_preset(plain)
    assert (plain.batch_size, plain.seed, plain.val_iterations, plain.disable_tta, plain.labeled) == \
        (None, None, None, False, [1, 3, 7])
    check_dataset_for_preset("acdc_cpu", "Dataset027_ACDC", {"inplane_downsample": 2}, ["RV", "MYO", "LV"])


def test_quarter_preset_is_the_cpu_protocol_at_quarter_resolution_with_self_training_and_warm_started_mt():
    from nnunet_mona.benchmark.presets import PRESETS, apply_preset, check_dataset_for_preset
    from nnunet_mona.benchmark.run_benchmark import build_parser
    args = build_parser().parse_args(["--preset", "acdc_cpu_quarter"])
    apply_preset(args)
    half = PRESETS["acdc_cpu"]
    assert args.d == "28" and args.trainers == ["nnUNetTrainerBudget", "SelfTraining",
                                                "nnUNetTrainerMeanTeacher_randomStart", "nnUNetTrainerMONA_randomStart",
                                                "nnUNetTrainerBudget+nnUNetTrainerMeanTeacher_randomStart"]
    assert (args.batch_size, args.labeled, args.epochs, args.iterations, args.val_iterations, args.device,
            args.disable_tta, args.seed) == tuple(half[k] for k in ("batch_size", "labeled", "epochs", "iterations",
                                                                     "val_iterations", "device", "disable_tta", "seed"))
    check_dataset_for_preset("acdc_cpu_quarter", "Dataset028_ACDC", {"inplane_downsample": 4}, ["RV", "MYO", "LV"])


# ------------------------------------------------------------------------------------------------ protocol guard
def test_output_folder_keeps_one_protocol(tmp_path):
    from nnunet_mona.benchmark.protocol_guard import check_same_protocol, write_stamp
    key = {"dataset_name": "D", "plans": "nnUNetPlans_bs8", "batch_size": 8, "epochs": 20, "patch_size": [128, 112],
           "inplane_downsample": 2}
    check_same_protocol(str(tmp_path), key)  # empty folder
    write_stamp(str(tmp_path), key)
    check_same_protocol(str(tmp_path), dict(key))
    for change in ({"batch_size": 4, "plans": "nnUNetPlans_bs4"}, {"inplane_downsample": 1},
                   {"patch_size": [256, 224]}):
        with pytest.raises(BenchmarkError, match="another protocol"):
            check_same_protocol(str(tmp_path), {**key, **change})
    old = tmp_path / "old"  # a folder from before the stamp: results.json's protocol is compared
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"protocol": {"plans": "nnUNetPlans", "epochs": 20}}))
    check_same_protocol(str(old), {"plans": "nnUNetPlans", "epochs": 20, "batch_size": 8})
    with pytest.raises(BenchmarkError, match="plans: 'nnUNetPlans' there, 'nnUNetPlans_bs8' now"):
        check_same_protocol(str(old), key)


# ------------------------------------------------------------------------------------------------ checkpoint
def test_checkpoint_choice(tmp_path, monkeypatch, nnunet_dirs):
    import argparse
    from nnunet_mona.benchmark import run_benchmark as rb
    from nnunet_mona.benchmark.layout import Layout
    from nnunet_mona.benchmark.preparation import teacher_trainers
    assert teacher_trainers(["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher", "nnUNetTrainerMONA"]) == \
        ["nnUNetTrainerMeanTeacher", "nnUNetTrainerMONA"]
    lay = Layout(str(tmp_path), "Dataset1_X")
    args = argparse.Namespace(checkpoint="teacher", device="cpu", np=None, disable_tta=True, file_ending=".nii.gz",
                              epochs=1, iterations=1, val_iterations=None, seed=None)
    bench = rb.Benchmark(args, lay, "imgs", "labs", ["case1"], [1], ["A"], teachers=["nnUNetTrainerMeanTeacher"])
    mt, plain, st = (bench.paths(3, s) for s in ("nnUNetTrainerMeanTeacher", "nnUNetTrainerBudget", "SelfTraining"))
    assert (mt.checkpoint, plain.checkpoint, st.checkpoint) == ("teacher", "student", "student")
    assert mt.predictions.endswith("predictions/nnUNetTrainerMeanTeacher__teacher")
    assert mt.metrics != mt.for_checkpoint("student").metrics
    commands = []

    def fake_run(cmd, log, env, prefix, *a, **k):
        commands.append(cmd)
        out = cmd[cmd.index("-o") + 1]
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, "case1.nii.gz"), "w").close()

    monkeypatch.setattr(rb, "run_logged", fake_run)
    with pytest.raises(BenchmarkError, match="checkpoint_final_teacher.pth does not exist"):
        bench.predict(3, mt, "[test]")
    for paths, name in ((mt, "checkpoint_final_teacher.pth"), (plain, "checkpoint_final.pth")):
        os.makedirs(paths.fold_folder(paths.final), exist_ok=True)
        open(os.path.join(paths.fold_folder(paths.final), name), "w").close()
        bench.predict(3, paths, "[test]")
        cmd = commands[-1]
        assert cmd[cmd.index("-chk") + 1] == name and cmd[cmd.index("-o") + 1] == paths.predictions


# ------------------------------------------------------------------------------------------------ figure
def test_legend_is_outside_the_axes(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from nnunet_mona.benchmark.report import bar_chart
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    summary = {"mona": {"mean": {"dice": 0.05}}}
    results = {"protocol": {"labeled_counts": [1, 3], "trainers": ["nnUNetTrainerBudget", "SelfTraining"],
                            "dataset_name": "D", "epochs": 1, "iterations_per_epoch": 1},
               "runs": [{"n_labeled": n, "trainer": t, "status": "ok", "summary": summary}
                        for n in (1, 3) for t in ("nnUNetTrainerBudget", "SelfTraining")]}
    bar_chart(results, str(tmp_path / "r.png"))
    fig = figures[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes.x1  # right of the axes: covers no bar


# ------------------------------------------------------------------------------------------------ earlier rows
def _report_run(tmp_path, n, trainer, dice, metrics=True):
    path = tmp_path / f"m_{n}_{trainer}.json"
    if metrics:
        path.write_text("{}")
    per_class = {c: {"dice": dice} for c in ("RV", "MYO", "LV")}
    summary = {k: {"mean": {"dice": dice, "hd95": 1.0, "asd": 1.0}, "per_class": per_class} for k in ("mona", "mm")}
    return {"n_labeled": n, "trainer": trainer, "status": "ok", "checkpoint": "student", "metrics_file": str(path),
            "summary": summary, "train": {}}


def _report_results(runs, counts, command):
    return {"protocol": {"labeled_counts": counts, "trainers": list(dict.fromkeys(r["trainer"] for r in runs)),
                         "dataset_name": "D", "epochs": 1, "iterations_per_epoch": 1, "command": command,
                         "splits": {str(n): {"labeled_cases": n, "unlabeled_cases": 4, "source": f"s{n}",
                                             "digest": "x"} for n in counts},
                         "configuration": "2d", "plans": "P", "fold": 0, "val_iterations": 1, "device": "cpu",
                         "parallel": 1, "host": "h", "seed": 0, "teacher_rows": [], "class_names": ["RV", "MYO", "LV"],
                         "evaluation": {"n_volumes": 1, "labels": "L", "protocols": {"mona": "m", "mm": "mm"}}},
            "runs": runs}


def _protocol_args():
    from argparse import Namespace
    return Namespace(c="2d", p="nnUNetPlans", fold=0, epochs=20, iterations=50, val_iterations=5, seed=0,
                     disable_tta=True, batch_size=None)


@pytest.mark.parametrize("where", ["stamp", "results"])
def test_an_old_folder_trained_with_trainer_overrides_is_refused_naming_the_variants(tmp_path, monkeypatch, where):
    """Rows trained under the removed nnUNet_mona_trainer_settings / _loss_weights carry the plain trainer names:
    such a folder is refused before any work, naming the classes that replace the override, and left unchanged."""
    from nnunet_mona.benchmark.protocol_guard import check_same_protocol, protocol_key
    for variable in ("nnUNet_mona_loss_weights", "nnUNet_mona_trainer_settings"):
        monkeypatch.delenv(variable, raising=False)
    key = protocol_key(_protocol_args(), "D", {}, "nnUNetPlans", {})
    assert "trainer_overrides" not in key  # a trainer's configuration is its class name
    recorded = {**key, "trainer_overrides": {"nnUNet_mona_trainer_settings": '{"supervised_warmup_fraction": 0.5}'}}
    if where == "stamp":
        path = tmp_path / "benchmark_protocol.json"
        path.write_text(json.dumps(recorded))
        # no trainer list there; half the epochs supervised is the default Mean Teacher's recipe
        expected = ["nnUNetTrainerMeanTeacher itself", "nnUNetTrainerMONA_warmStart"]
    else:
        path = tmp_path / "results.json"
        path.write_text(json.dumps({"protocol": {**recorded, "trainers": ["nnUNetTrainerBudget + nnUNetTrainerMONA"],
                                                 "trainer_specs": ["nnUNetTrainerBudget+nnUNetTrainerMONA"]},
                                    "runs": []}))
        expected = ["nnUNetTrainerMONA_warmStart (for nnUNetTrainerMONA)"]
    before = path.read_text()
    with pytest.raises(BenchmarkError) as info:
        check_same_protocol(str(tmp_path), key)
    message = str(info.value)
    assert "trainer overrides" in message and "no longer exist" in message and "-o" in message
    for name in expected:
        assert name in message
    if where == "results":
        assert "MeanTeacher" not in message  # only the folder's own trainers
    assert path.read_text() == before and sorted(os.listdir(tmp_path)) == [path.name]


def test_old_folders_without_overrides_stay_readable_and_a_set_variable_stops_the_run(tmp_path, monkeypatch):
    from nnunet_mona.benchmark.protocol_guard import check_same_protocol, protocol_key
    from nnunet_mona.benchmark.report import markdown
    for variable in ("nnUNet_mona_loss_weights", "nnUNet_mona_trainer_settings"):
        monkeypatch.delenv(variable, raising=False)
    key = protocol_key(_protocol_args(), "D", {}, "nnUNetPlans", {})
    (tmp_path / "benchmark_protocol.json").write_text(json.dumps({**key, "trainer_overrides": {}}))
    check_same_protocol(str(tmp_path), key)  # recorded before the overrides were removed, none set: the same run
    results = _report_results([_report_run(tmp_path, 3, "MT", 0.6)], [3], "command")
    results["protocol"]["trainer_overrides"] = {}
    assert "trainer overrides" not in markdown(results)
    monkeypatch.setenv("nnUNet_mona_loss_weights", '{"unsup": 0, "unsup_dice": 0}')
    with pytest.raises(BenchmarkError, match="nnUNetTrainerMeanTeacher_noUnsup") as info:
        check_same_protocol(str(tmp_path / "new"), key)
    assert "nothing was run" in str(info.value)
    from nnunet_mona.benchmark.protocol_guard import REMOVED_OVERRIDE_VARIABLES
    from nnunet_mona.trainers.removed_overrides import REMOVED_VARIABLES
    assert sorted(REMOVED_OVERRIDE_VARIABLES) == sorted(REMOVED_VARIABLES)


def test_a_row_missing_for_a_labeled_count_gets_no_bar_and_says_so():
    from nnunet_mona.benchmark.report import bar_heights_and_labels
    runs = [{"n_labeled": 3, "trainer": "MT", "status": "ok", "summary": {"mona": {"mean": {"dice": 0.724}}}},
            {"n_labeled": 7, "trainer": "MT", "status": "failed", "summary": None}]
    results = {"runs": runs}
    heights, labels = bar_heights_and_labels(results, "MT", [1, 3, 7])
    assert heights == pytest.approx([0.0, 72.4, 0.0]) and labels == ["not run", "72.4", "failed"]


def test_rows_of_an_earlier_invocation_stay_in_the_report_while_their_metrics_exist(tmp_path):
    from nnunet_mona.benchmark.earlier_rows import keep_earlier_rows
    from nnunet_mona.benchmark.report import EARLIER_MARK, bar_chart, markdown
    first = _report_results([_report_run(tmp_path, 3, "plain", 0.5), _report_run(tmp_path, 3, "MT", 0.6),
                             _report_run(tmp_path, 3, "gone", 0.1, metrics=False),
                             _report_run(tmp_path, 1, "plain", 0.3)], [1, 3], "first command")
    second = _report_results([_report_run(tmp_path, 3, "MT", 0.65), _report_run(tmp_path, 3, "MONA", 0.7)], [3],
                             "second command")
    merged = keep_earlier_rows(first, second)
    rows = [(r["n_labeled"], r["trainer"], r["summary"]["mona"]["mean"]["dice"], r.get("earlier_command"))
            for r in merged["runs"]]
    # MT was run again: only the new value; a row without metrics (its model retrained since) is dropped
    assert rows == [(3, "plain", 0.5, "first command"), (1, "plain", 0.3, "first command"),
                    (3, "MT", 0.65, None), (3, "MONA", 0.7, None)]
    assert merged["protocol"]["labeled_counts"] == [1, 3] and set(merged["protocol"]["splits"]) == {"1", "3"}
    assert merged["protocol"]["trainers"] == ["plain", "MT", "MONA"]
    text = markdown(merged)
    assert f"| plain {EARLIER_MARK} | 50.0" in text and "| MONA | 70.0" in text and "`first command`" in text
    assert "## 1 labeled" in text
    # a third invocation keeps the first one's rows with the first command
    third = keep_earlier_rows(merged, _report_results([_report_run(tmp_path, 3, "MONA", 0.71)], [3], "third"))
    assert {r["trainer"]: r.get("earlier_command") for r in third["runs"] if r["n_labeled"] == 3} == \
        {"plain": "first command", "MT": "second command", "MONA": None}
    assert keep_earlier_rows(None, second) is second
    bar_chart(merged, str(tmp_path / "r.png"))


# ------------------------------------------------------------------------------------------------ end to end
SELF_ID = 984


@pytest.fixture(scope="module")
def poisoned_dataset(nnunet_dirs):
    """1 labeled + 2 'unlabeled' patients (2 frames each), 1 test patient; planned and preprocessed, then the
    labels of the unlabeled cases are deleted (preprocessed) or replaced by garbage (raw, gt_segmentations) and their
    class_locations poisoned: reading any of them fails or shows."""
    from nnunet_mona.demo.synthetic_dataset import write_synthetic_dataset
    roles = write_synthetic_dataset(nnunet_dirs["raw"], dataset_id=SELF_ID, dataset_name="MonaSelfTraining",
                                    n_labeled_patients=1, n_unlabeled_patients=2, n_test_patients=1, size=(64, 64),
                                    n_slices=2, unlabeled_as_training_cases=True, seed=4)
    name = f"Dataset{SELF_ID}_MonaSelfTraining"
    raw = os.path.join(nnunet_dirs["raw"], name)
    with open(os.path.join(raw, "splits_final_1labeled.json"), "w") as f:
        json.dump([{"train": roles["labeled"], "val": roles["labeled"], "unlabeled": roles["unlabeled"]}], f)
    _plan_and_preprocess(SELF_ID)
    pre = os.path.join(nnunet_dirs["preprocessed"], name)
    for case in roles["unlabeled"]:
        os.remove(os.path.join(pre, "nnUNetPlans_2d", case + "_seg.b2nd"))
        for label in (os.path.join(raw, "labelsTr", case + ".nii.gz"), os.path.join(pre, "gt_segmentations",
                                                                                    case + ".nii.gz")):
            with open(label, "wb") as f:
                f.write(b"not a label")
        pkl = os.path.join(pre, "nnUNetPlans_2d", case + ".pkl")
        with open(pkl, "rb") as f:
            properties = pickle.load(f)
        properties["class_locations"] = {k: "POISON" for k in properties["class_locations"]}
        with open(pkl, "wb") as f:
            pickle.dump(properties, f)
    return {"name": name, "roles": roles, "pre": pre, **nnunet_dirs}


def _self_cmd(output, batch):
    return [os.path.join(BIN, "nnUNetv2_mona_benchmark"), "-d", str(SELF_ID), "--labeled", "1", "--trainers",
            "SelfTraining", "--batch_size", str(batch), "--epochs", "1", "--iterations", "2", "--val_iterations", "1",
            "--device", "cpu", "--np", "1", "--disable_tta", "-o", output]


def test_self_training_row_end_to_end(poisoned_dataset, tmp_path):
    import blosc2
    d, roles = poisoned_dataset, poisoned_dataset["roles"]
    env = dict(os.environ, nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1")
    output = str(tmp_path / "bench")
    log = run_cmd(_self_cmd(output, 3), timeout=900, env=env)
    results = json.load(open(os.path.join(output, "results.json")))
    (row,) = results["runs"]
    assert row["status"] == "ok", (row, log[-3000:])
    assert row["trainer"] == "SelfTraining" and 0.0 <= row["summary"]["mona"]["mean"]["dice"] <= 1.0
    first, pseudo, last = row["train"]["stages"]
    assert pseudo["n_pseudo_labeled_cases"] == len(roles["unlabeled"])
    assert row["train"]["wall_seconds_this_segment"] == pytest.approx(
        first["wall_seconds_this_segment"] + pseudo["wall_seconds"] + last["wall_seconds_this_segment"], abs=0.2)
    # the plans copy: batch 3, same data identifier, nothing preprocessed again
    p = results["protocol"]
    assert (p["plans"], p["batch_size"], p["data_identifier"]) == ("nnUNetPlans_bs3", 3, "nnUNetPlans_2d")
    for fold in (first["fold_folder"], last["fold_folder"]):
        assert "nnUNetTrainerBudget__nnUNetPlans_bs3__2d" in fold
        plans = json.load(open(os.path.join(os.path.dirname(fold), "plans.json")))
        assert plans["configurations"]["2d"]["batch_size"] == 3
    assert sorted(os.listdir(d["pre"])) == sorted(e for e in os.listdir(d["pre"]) if "bs3" not in e)
    # the retraining trained on labeled + pseudo-labeled cases, with pseudo-labels and clean properties
    derived = os.path.join(row["preprocessed_root"], d["name"])
    split = json.load(open(os.path.join(derived, "splits_final.json")))[0]
    assert sorted(split["train"]) == sorted(roles["labeled"] + roles["unlabeled"]) and split["unlabeled"] == []
    assert f"This split has {len(split['train'])} training and" in open(row["train_log"]).read()
    for case in roles["unlabeled"]:
        seg = blosc2.open(os.path.join(derived, "nnUNetPlans_2d", case + "_seg.b2nd"))[:]
        props = pickle.load(open(os.path.join(derived, "nnUNetPlans_2d", case + ".pkl"), "rb"))
        assert props["pseudo_label"] and "POISON" not in str(props["class_locations"])
        for label, locations in props["class_locations"].items():
            locations = np.asarray(locations).reshape(-1, seg.ndim)
            assert all(seg[tuple(loc)] == label for loc in locations[:50])
    # another batch size in the same folder: refused before any work
    proc = subprocess.run(_self_cmd(output, 2), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and "another protocol" in proc.stderr and "batch_size: 3 there, 2 now" in proc.stderr
    assert not any("bs2" in e for e in os.listdir(os.path.join(output, "labeled_1", "nnUNet_preprocessed", d["name"])))


@pytest.mark.parametrize("trainers, on_disk, refused", [
    (["nnUNetTrainerBudget + nnUNetTrainerMeanTeacher"], [], "nnUNetTrainerMeanTeacher"),
    ([], ["nnUNetTrainerMONA_noContrast"], "nnUNetTrainerMONA_noContrast"),  # inherits the changed default
    (["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher_warmStart", "nnUNetTrainerMeanTeacher_randomStart"],
     ["nnUNetTrainerACTION", "nnUNetTrainerMONA_paperRecipe"], None),  # their own settings: unchanged
    ([], ["nnUNetTrainerMONA_randomStart"], "nnUNetTrainerMONA_randomStart"),  # its warm-up, not its equivariance
])
def test_a_folder_from_before_the_warm_start_defaults_is_refused_where_its_rows_changed_meaning(
        tmp_path, monkeypatch, trainers, on_disk, refused):
    """A folder recording no trainer-defaults revision was trained when nnUNetTrainerMeanTeacher / MONA (and the
    variants inheriting their warm-up) had none: resuming it would show those finished rows under names that now
    train a warm start. Refused, naming the rows and the _randomStart variants, and left unchanged; rows whose
    classes set their own warm-up are not affected, nor is a folder of the current revision."""
    from nnunet_mona.benchmark.protocol_guard import check_same_protocol, protocol_key
    for variable in ("nnUNet_mona_loss_weights", "nnUNet_mona_trainer_settings"):
        monkeypatch.delenv(variable, raising=False)
    key = protocol_key(_protocol_args(), "D", {}, "nnUNetPlans", {})
    old = {k: v for k, v in key.items() if k != "trainer_defaults"}
    (tmp_path / "results.json").write_text(json.dumps({"protocol": {**old, "trainers": trainers}, "runs": []}))
    for name in on_disk:
        os.makedirs(tmp_path / "labeled_3" / "nnUNet_results" / "Dataset001_D" / f"{name}__nnUNetPlans__2d")
    before = (tmp_path / "results.json").read_text()
    if refused is None:
        check_same_protocol(str(tmp_path), key)
    else:
        with pytest.raises(BenchmarkError) as info:
            check_same_protocol(str(tmp_path), key)
        message = str(info.value)
        assert refused in message and "_randomStart" in message and "-o" in message, message
        assert (tmp_path / "results.json").read_text() == before
        (tmp_path / "benchmark_protocol.json").write_text(json.dumps(key))  # the current revision: accepted
        (tmp_path / "results.json").write_text(json.dumps({"protocol": {**key, "trainers": trainers}, "runs": []}))
        check_same_protocol(str(tmp_path), key)


_EQV, _ALIGN = (2, "nnUNetTrainerMONA_equivariance", "_randomStart"), (3, "nnUNetTrainerMeanTeacher_warmStart for",
                                                                      "_equivariance")


@pytest.mark.parametrize("change, on_disk, refused", [
    # revision 2: nnUNetTrainerMONA had the equivariance term
    (_EQV, ["nnUNetTrainerMONA_warmStart"], "nnUNetTrainerMONA_warmStart"),  # inherits the switch from the default
    (_EQV, ["nnUNetTrainerMONA"], "nnUNetTrainerMONA"),
    (_EQV, ["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher_warmStart", "nnUNetTrainerMONA_noEquivariance",
            "nnUNetTrainerMONA_equivariance", "nnUNetTrainerMONA_paperRecipe"], None),  # their own switch
    # revision 3: nnUNetTrainerMeanTeacher aligned the teacher's class distribution
    (_ALIGN, ["nnUNetTrainerMeanTeacher"], "nnUNetTrainerMeanTeacher"),
    (_ALIGN, ["nnUNetTrainerMeanTeacher_copyPaste"], "nnUNetTrainerMeanTeacher_copyPaste"),  # inherits the switch
    (_ALIGN, ["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher_warmStart", "nnUNetTrainerMeanTeacher_randomStart",
              "nnUNetTrainerMeanTeacher_noAlignment", "nnUNetTrainerMeanTeacher_alignToLabelMaps",
              "nnUNetTrainerMONA"], None),  # their own switch, or not a Mean Teacher
])
def test_a_folder_from_before_a_default_changed_is_refused_where_its_rows_changed_meaning(
        tmp_path, monkeypatch, change, on_disk, refused):
    """A folder of an older trainer-defaults revision (2: nnUNetTrainerMONA had the equivariance term; 3:
    nnUNetTrainerMeanTeacher aligned the teacher's class distribution): its rows of classes inheriting the changed
    switch are refused, naming the old recipe's variant, and the folder is left unchanged; changes older than the
    folder are not named; a folder of unaffected rows is resumed."""
    from nnunet_mona.benchmark.protocol_guard import check_same_protocol, protocol_key
    revision, old_recipe, older_change = change
    for variable in ("nnUNet_mona_loss_weights", "nnUNet_mona_trainer_settings"):
        monkeypatch.delenv(variable, raising=False)
    key = protocol_key(_protocol_args(), "D", {}, "nnUNetPlans", {})
    (tmp_path / "benchmark_protocol.json").write_text(json.dumps({**key, "trainer_defaults": revision}))
    for name in on_disk:
        os.makedirs(tmp_path / "labeled_3" / "nnUNet_results" / "Dataset001_D" / f"{name}__nnUNetPlans__2d")
    before = (tmp_path / "benchmark_protocol.json").read_text()
    if refused is None:
        check_same_protocol(str(tmp_path), key)
        return
    with pytest.raises(BenchmarkError) as info:
        check_same_protocol(str(tmp_path), key)
    message = str(info.value)
    assert refused in message and old_recipe in message and "-o" in message, message
    assert older_change not in message  # a change older than this folder
    assert (tmp_path / "benchmark_protocol.json").read_text() == before


def test_rows_that_would_not_train_the_recipe_their_name_says_are_refused_before_any_work():
    """A warm-started trainer whose warm-up leaves --epochs no semi-supervised epoch (the training would shorten
    it), and a warm-started chain stage (it starts from the previous stage's model): clear errors naming the
    variant without warm-up. The same rows without warm-up pass."""
    from nnunet_mona.benchmark import preparation as prep
    from nnunet_mona.benchmark.chains import check_specs
    ok = ["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher", "SelfTraining+nnUNetTrainerMONA_randomStart",
          "nnUNetTrainerBudget+nnUNetTrainerMeanTeacher_randomStart"]
    prep.check_trainers(check_specs(ok))
    prep.check_warmups(ok, 2)
    with pytest.raises(BenchmarkError, match=r"nnUNetTrainerMeanTeacher with --epochs 1: .*leaves no "
                                             r"semi-supervised epoch.*nnUNetTrainerMeanTeacher_randomStart"):
        prep.check_warmups(ok, 1)
    prep.check_warmups(["nnUNetTrainerMeanTeacher_randomStart"], 1)
    for chain in ("nnUNetTrainerBudget+nnUNetTrainerMeanTeacher", "SelfTraining+nnUNetTrainerMONA"):
        prep.check_trainers(check_specs([chain]))
        with pytest.raises(BenchmarkError, match=r"starts from the previous stage's model.*_randomStart"):
            prep.check_warmups([chain], 20)
