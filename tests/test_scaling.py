"""nnUNetv2_mona_scaling: the plan (budgets, rows, folders), the measured totals and their flags, the report's
margins, refusals before any work, and one tiny end-to-end run on CPU (two budgets: plain nnU-Net, offline
self-training, the warm-started Mean Teacher and the full-supervision ceiling), previewed with --dry_run before and
after, resumed, then refused for another protocol."""
import json
import os
import subprocess
import sys

import pytest

from conftest import benchmark_dataset_with_splits, run_cmd
from nnunet_mona.benchmark.processes import BenchmarkError
from nnunet_mona.benchmark.scaling import merge_stamp
from nnunet_mona.benchmark.scaling_plan import (check_budgets, check_rows, invocations, measured_total_iterations,
                                                self_training_folder_budget)
from nnunet_mona.benchmark.scaling_report import FLAG, budget_folder, collect, markdown

BIN = os.path.dirname(sys.executable)


# ------------------------------------------------------------------------------------------------ plan
@pytest.mark.parametrize("budgets, message", [([], "empty"), ([100, 200, 100], r"\[100\] more than once"),
                                              ([25], "below one epoch"), ([120], "not a whole number of epochs")])
def test_bad_budget_lists_are_refused(budgets, message):
    with pytest.raises(BenchmarkError, match=message):
        check_budgets(budgets, 50)


def test_budgets_largest_first_and_rows_checked():
    assert check_budgets([1000, 8000, 2000], 50) == [8000, 2000, 1000]
    with pytest.raises(BenchmarkError, match="more than once"):
        check_rows(["plain", "plain"])
    with pytest.raises(BenchmarkError, match="self_training / plain instead of SelfTraining"):
        check_rows(["SelfTraining"])


def test_self_training_gets_half_the_budget_per_training():
    assert self_training_folder_budget(8000, 50) == 4000
    assert self_training_folder_budget(150, 50) == 50  # 3 epochs: 1 + 1, its measured total shows the shortfall
    calls = invocations([8000, 4000], ["plain", "self_training", "nnUNetTrainerMeanTeacher_warmStart", "ceiling"],
                        [3], 70, 50)
    assert [(c.folder_budget, c.labeled, c.trainers) for c in calls] == [
        (8000, (3,), ("nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher_warmStart")),
        (4000, (3,), ("SelfTraining",)), (8000, (70,), ("nnUNetTrainerBudget",)),
        (4000, (3,), ("nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher_warmStart")),
        (2000, (3,), ("SelfTraining",)), (4000, (70,), ("nnUNetTrainerBudget",))]


def test_measured_total_sums_every_training():
    one = {"epochs_completed": 40, "iterations_per_epoch": 50}
    assert measured_total_iterations(one) == 2000
    self_training = {**one, "stages": [one, {"wall_seconds": 12.0}, one]}  # plain, pseudo-labelling, retraining
    assert measured_total_iterations(self_training) == 4000
    chain = {**one, "stages": [dict(self_training, stage="SelfTraining"), dict(one, stage="nnUNetTrainerMT")]}
    assert measured_total_iterations(chain) == 6000
    assert measured_total_iterations({"epochs_completed": 3}) is None  # iterations unknown: never assumed


# ------------------------------------------------------------------------------------------------ report
def _write_results(folder, runs):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"protocol": {}, "runs": runs}, f)


def _run(n, trainer, dice, epochs, per_epoch=50):
    return {"n_labeled": n, "trainer": trainer, "status": "ok", "summary": {"mona": {"mean": {"dice": dice}}},
            "train": {"epochs_completed": epochs, "iterations_per_epoch": per_epoch, "mean_epoch_seconds": 10.0}}


def _stamp(**extra):
    return {"seeds": [0], "rows": ["plain", "self_training", "nnUNetTrainerMeanTeacher_warmStart", "ceiling"],
            "budgets": [1000], "labeled": [3], "ceiling_labeled": 70, "iterations_per_epoch": 50,
            "dataset_name": "Dataset028_ACDC_SSL", "evaluation": "imagesTs / labelsTs", "benchmark_options": [],
            "commands": [], **extra}


def test_margins_and_the_flag_of_a_row_trained_with_another_total(tmp_path):
    out = str(tmp_path)
    half = {"epochs_completed": 10, "iterations_per_epoch": 50, "mean_epoch_seconds": 10.0}
    self_training = dict(_run(3, "SelfTraining", 0.60, 10), train={**half, "stages": [half, {"wall_seconds": 5}, half]})
    _write_results(budget_folder(out, 0, 500), [self_training])
    _write_results(budget_folder(out, 0, 1000), [
        _run(3, "nnUNetTrainerBudget", 0.50, 20), _run(70, "nnUNetTrainerBudget", 0.80, 20),
        _run(3, "nnUNetTrainerMeanTeacher_warmStart", 0.74, 20)])
    report = collect(out, _stamp())
    table, m = report["tables"]["3"], report["margins"]["3"]["nnUNetTrainerMeanTeacher_warmStart"]["1000"]
    assert not any(cells["1000"]["flagged"] for cells in table.values())
    assert table["self_training"]["1000"]["seeds"][0]["total_iterations"] == 1000
    assert table["self_training"]["1000"]["training_seconds"] == pytest.approx(205.0)
    assert m["over_plain"] == pytest.approx(24.0) and m["over_self_training"] == pytest.approx(14.0)
    assert m["gap_closed"] == pytest.approx(0.8)
    assert FLAG not in markdown(report).split("## 3 labeled")[1].split("###")[0]

    # the same row trained for 40 epochs (twice its budget): flagged, listed, and out of the margins
    _write_results(budget_folder(out, 0, 1000), [
        _run(3, "nnUNetTrainerBudget", 0.50, 20), _run(70, "nnUNetTrainerBudget", 0.80, 20),
        _run(3, "nnUNetTrainerMeanTeacher_warmStart", 0.74, 40)])
    report = collect(out, _stamp())
    cell = report["tables"]["3"]["nnUNetTrainerMeanTeacher_warmStart"]["1000"]
    assert cell["flagged"] and cell["seeds"][0]["total_iterations"] == 2000
    assert report["margins"]["3"]["nnUNetTrainerMeanTeacher_warmStart"]["1000"]["over_plain"] is None
    md = markdown(report)
    assert f"74.0 {FLAG}" in md and "at B = 1000, seed 0: trained 2000 iterations" in md


def test_missing_rows_read_not_run_and_seeds_average(tmp_path):
    out = str(tmp_path)
    for seed, dice in ((0, 0.5), (1, 0.6)):
        _write_results(budget_folder(out, seed, 1000), [_run(3, "nnUNetTrainerBudget", dice, 20)])
    report = collect(out, _stamp(seeds=[0, 1]))
    plain = report["tables"]["3"]["plain"]["1000"]
    assert plain["dice"] == pytest.approx(0.55) and len(plain["seeds"]) == 2
    assert report["tables"]["3"]["ceiling"]["1000"]["status"] == "not run"
    assert "55.0 (2 seeds)" in markdown(report)


def test_trend_is_the_least_squares_line_per_doubling_and_empty_rows_and_counts_are_left_out(tmp_path):
    """Plain nnU-Net at 1000 / 2000 / 4000 (50, 54, 56 %): slope 3 points per doubling, its line at nnU-Net's
    250 000 iterations 53.33 + 3 x (log2(250) - 1) = 74.2; a row with one budget has no trend; a line above 100 is
    not printed as a number. A row measured at no budget, and a labeled count with only the shared ceiling, are not
    in the markdown."""
    import math
    out = str(tmp_path)
    for budget, dice in ((1000, 0.50), (2000, 0.54), (4000, 0.56)):
        mt = 0.60 + 0.2 * math.log2(budget / 1000)  # +20 points per doubling: its line ends far above 100
        _write_results(budget_folder(out, 0, budget), [_run(3, "nnUNetTrainerBudget", dice, budget // 50),
                                                       _run(3, "nnUNetTrainerMeanTeacher_warmStart", mt, budget // 50),
                                                       _run(70, "nnUNetTrainerBudget", 0.8, budget // 50)])
    report = collect(out, _stamp(budgets=[1000, 2000, 4000], labeled=[1, 3]))
    trend = report["trends"]["3"]["plain"]
    assert trend["per_doubling"] == pytest.approx(3.0) and trend["budgets"] == [1000, 2000, 4000]
    assert trend["at_nnunet_default"] == pytest.approx(53.3333 + 3.0 * (math.log2(250) - 1), abs=1e-3)
    assert report["trends"]["3"]["self_training"] is None  # not run
    md = markdown(report)
    assert "| plain nnU-Net (nnUNetTrainerBudget) | 1000, 2000, 4000 | +3.00 | 74.2 |" in md
    assert "| nnUNetTrainerMeanTeacher_warmStart | 1000, 2000, 4000 | +20.00 | above 100 |" in md
    assert "offline self-training" not in md.split("## 3 labeled")[1]  # measured nowhere
    assert "## 1 labeled" not in md  # only the ceiling, which every count shares


def test_margins_pair_seeds_a_row_with_a_second_seed_is_not_set_against_one_seed_alone(tmp_path):
    """Mean Teacher has seeds 0 and 1, plain nnU-Net and the ceiling seed 0 only: the gain over plain is seed 0's
    difference (not the two-seed mean against seed 0), and the table names the seed it used."""
    out = str(tmp_path)
    _write_results(budget_folder(out, 0, 1000), [_run(3, "nnUNetTrainerBudget", 0.50, 20),
                                                 _run(70, "nnUNetTrainerBudget", 0.80, 20),
                                                 _run(3, "nnUNetTrainerMeanTeacher_warmStart", 0.70, 20)])
    _write_results(budget_folder(out, 1, 1000), [_run(3, "nnUNetTrainerMeanTeacher_warmStart", 0.60, 20)])
    report = collect(out, _stamp(seeds=[0, 1]))
    assert report["tables"]["3"]["nnUNetTrainerMeanTeacher_warmStart"]["1000"]["dice"] == pytest.approx(0.65)
    m = report["margins"]["3"]["nnUNetTrainerMeanTeacher_warmStart"]["1000"]
    assert m["over_plain"] == pytest.approx(20.0) and m["seeds"] == [0]
    assert m["gap_closed"] == pytest.approx(20 / 30)
    assert "+20.0 / n/a / 67 % (seed 0)" in markdown(report)
    # with plain's second seed the gain is the mean of the paired differences, over both seeds
    _write_results(budget_folder(out, 1, 1000), [_run(3, "nnUNetTrainerMeanTeacher_warmStart", 0.60, 20),
                                                 _run(3, "nnUNetTrainerBudget", 0.56, 20)])
    m = collect(out, _stamp(seeds=[0, 1]))["margins"]["3"]["nnUNetTrainerMeanTeacher_warmStart"]["1000"]
    assert m["over_plain"] == pytest.approx(12.0) and m["seeds"] == [0, 1]
    assert m["gap_closed"] == pytest.approx(12 / (80 - 53))


def test_a_row_finished_while_its_benchmark_call_still_runs_is_reported(tmp_path):
    out = str(tmp_path)
    folder = budget_folder(out, 0, 1000)  # no results.json yet: the call's other rows still train
    for sub, name, content in (("metrics", "nnUNetTrainerBudget.json", {"summary": {"mona": {"mean": {"dice": 0.6}}}}),
                               ("records", "nnUNetTrainerBudget_train.json",
                                {"epochs_completed": 20, "iterations_per_epoch": 50, "mean_epoch_seconds": 3.0})):
        os.makedirs(os.path.join(folder, "labeled_3", sub), exist_ok=True)
        with open(os.path.join(folder, "labeled_3", sub, name), "w") as f:
            json.dump(content, f)
    report = collect(out, _stamp())
    plain = report["tables"]["3"]["plain"]["1000"]
    assert plain["status"] == "ok" and plain["dice"] == pytest.approx(0.6) and not plain["flagged"]
    assert report["tables"]["3"]["nnUNetTrainerMeanTeacher_warmStart"]["1000"]["status"] == "not run"


def test_stamp_extends_with_the_same_protocol_and_refuses_another(tmp_path):
    out = str(tmp_path)
    first = dict(_stamp(), dataset_name="D", preset=None, batch_size=8, val_iterations=5, disable_tta=True,
                 fold=0, configuration="2d", plans="nnUNetPlans", test_images="imagesTs", test_labels="labelsTs",
                 splits_pattern="p", commands=["a"])
    with open(os.path.join(out, "scaling_protocol.json"), "w") as f:
        json.dump(first, f)
    more = dict(first, budgets=[2000], labeled=[1], seeds=[1], commands=["b"])
    merged = merge_stamp(out, more)
    assert merged["budgets"] == [1000, 2000] and merged["labeled"] == [3, 1] and merged["seeds"] == [0, 1]
    assert merged["commands"] == ["a", "b"]
    with pytest.raises(BenchmarkError, match=r"iterations_per_epoch: 50 there, 25 now"):
        merge_stamp(out, dict(more, iterations_per_epoch=25))


def test_report_only_writes_the_table_from_the_folder_and_trains_nothing(tmp_path, capsys):
    from nnunet_mona.benchmark.scaling import entry_point
    out = str(tmp_path)
    with pytest.raises(SystemExit) as stop:
        entry_point(["-o", out, "--report_only"])  # no scaling run here yet
    assert stop.value.code == 1 and "scaling_protocol.json missing" in capsys.readouterr().err
    _write_results(budget_folder(out, 0, 1000), [_run(3, "nnUNetTrainerBudget", 0.5, 20)])
    with open(os.path.join(out, "scaling_protocol.json"), "w") as f:
        json.dump(_stamp(), f)
    with pytest.raises(SystemExit) as stop:
        entry_point(["-o", out, "--report_only"])
    assert stop.value.code == 0 and "nothing trained" in capsys.readouterr().out
    md = open(os.path.join(out, "scaling.md")).read()
    assert "| plain nnU-Net (nnUNetTrainerBudget) | 50.0 |" in md
    assert "nnUNetTrainerMeanTeacher_warmStart" not in md  # a row of the stamp measured at no budget
    assert os.path.isfile(os.path.join(out, "scaling.png"))


# ------------------------------------------------------------------------------------------------ end to end
SCALING_ID = 983
ROWS = ["plain", "self_training", "nnUNetTrainerMeanTeacher_warmStart", "ceiling"]


@pytest.fixture(scope="module")
def scaling_dataset(nnunet_dirs):
    # N = 1: 2 frames of the first patient; N = 4: every training patient (the ceiling)
    ds = benchmark_dataset_with_splits(nnunet_dirs["raw"], SCALING_ID, "MonaScaling", 4,
                                       lambda roles: {1: roles["labeled"][:2], 4: roles["labeled"] + roles["unlabeled"]})
    return {**ds, **nnunet_dirs}


def _scaling_cmd(output, *extra, budgets=("4", "8"), ceiling="4"):
    return [os.path.join(BIN, "nnUNetv2_mona_scaling"), "-d", str(SCALING_ID), "--budgets", *budgets,
            "--iterations", "2", "--labeled", "1", "--ceiling_labeled", ceiling, "--rows", *ROWS, "--seed", "0",
            "--val_iterations", "1", "--device", "cpu", "--parallel", "2", "--np", "1", "--disable_tta",
            "--checkpoint_every", "2", "-o", output, *extra]


def _env():
    env = os.environ.copy()
    env.update({"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_mona_skip_validation": "1"})
    return env


def test_bad_input_is_refused_before_any_work(scaling_dataset, tmp_path):
    for options, message in (({"budgets": ("4", "4")}, "more than once"),
                             ({"budgets": ("1",)}, "below one epoch"),
                             ({"budgets": ("2",)}, "leaves no semi-supervised epoch"),  # a warm-up of its 1 epoch
                             ({"ceiling": "3"}, "splits_final_3labeled.json")):
        cmd = _scaling_cmd(str(tmp_path / "x"), **options)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
        assert proc.returncode == 1 and message in proc.stderr, (options, proc.stderr[-2000:])
        assert not os.path.exists(tmp_path / "x")


def test_scaling_end_to_end_resume_and_protocol_refusal(scaling_dataset, tmp_path):
    output = str(tmp_path / "scaling")
    dry = run_cmd(_scaling_cmd(output, "--dry_run"), timeout=300, env=_env())
    assert "8 of 8 cells to train, 48 training iterations" in dry and not os.path.exists(output), dry[-3000:]
    first = run_cmd(_scaling_cmd(output), timeout=1800, env=_env())
    for name in ("scaling.json", "scaling.md", "scaling.png", "scaling_protocol.json"):
        assert os.path.isfile(os.path.join(output, name)), (name, first[-3000:])
    report = json.load(open(os.path.join(output, "scaling.json")))
    table = report["tables"]["1"]
    for row in ROWS:
        for budget in ("4", "8"):
            cell = table[row][budget]
            assert cell["status"] == "ok", (row, budget, cell, first[-3000:])
            # every row spent exactly its budget, self-training's two trainings together
            assert cell["seeds"][0]["total_iterations"] == int(budget) and not cell["flagged"], (row, budget, cell)
            assert 0.0 <= cell["dice"] <= 1.0 and cell["training_seconds"] > 0
    assert table["self_training"]["8"]["seeds"][0]["folder_budget"] == 4
    assert report["margins"]["1"]["nnUNetTrainerMeanTeacher_warmStart"]["8"]["over_plain"] is not None
    # self-training at 8 = the SelfTraining row of the budget-4 folder, whose first training is that folder's plain row
    plain_4 = os.path.join(budget_folder(output, 0, 4), "labeled_1", "nnUNet_results",
                           f"Dataset{SCALING_ID}_MonaScaling")
    assert sorted(os.listdir(plain_4)) == ["nnUNetTrainerBudget__nnUNetPlans__2d",
                                           "nnUNetTrainerMeanTeacher_warmStart__nnUNetPlans__2d"]
    md = open(os.path.join(output, "scaling.md")).read()
    assert "| plain nnU-Net, 4 labeled (ceiling) |" in md and FLAG + " Rows trained" not in md

    dry = run_cmd(_scaling_cmd(output, "--dry_run"), timeout=300, env=_env())
    assert "0 of 8 cells to train" in dry and dry.count("[done]") == 8, dry[-3000:]
    again = run_cmd(_scaling_cmd(output), timeout=600, env=_env())
    assert again.count("RESUMED: every step was already complete, nothing was run") == 6, again[-3000:]
    assert json.load(open(os.path.join(output, "scaling.json")))["tables"] == report["tables"]

    proc = subprocess.run(_scaling_cmd(output, "--iterations", "1"), capture_output=True, text=True, env=_env(),
                          timeout=120)
    assert proc.returncode == 1 and "iterations_per_epoch: 2 there, 1 now" in proc.stderr, proc.stderr[-2000:]
