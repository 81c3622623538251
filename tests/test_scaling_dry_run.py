"""nnUNetv2_mona_scaling --dry_run: each cell's status read from the budget folders as the benchmark decides it
(metrics file = done, checkpoint_latest without checkpoint_final = interrupted), self-training's first training
counted once when the plain model exists, and the time left from the folder's measured seconds per iteration.
The command itself (nothing written) is run in test_scaling's end-to-end test."""
import json
import os

from nnunet_mona.benchmark.scaling_plan import invocations
from nnunet_mona.benchmark.scaling_preview import measured_rates, plan_cells, preview_lines
from nnunet_mona.benchmark.scaling_report import budget_folder

MT = "nnUNetTrainerMeanTeacher_noAlignment"


def _touch(path: str, content: str = "{}") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)


def _fold(output: str, budget: int, n: int, trainer: str, *base: str) -> str:
    return os.path.join(budget_folder(output, 0, budget), f"labeled_{n}", *base, "nnUNet_results", "Dataset9_X",
                        f"{trainer}__nnUNetPlans__2d", "fold_0")


def _record(output: str, budget: int, n: int, trainer: str, rate: float) -> None:
    _touch(os.path.join(budget_folder(output, 0, budget), f"labeled_{n}", "records", f"{trainer}_train.json"),
           json.dumps({"trainer_name": trainer, "seconds_per_iteration": rate}))


def test_cells_are_done_interrupted_or_to_train_and_the_time_left_uses_measured_rates(tmp_path):
    out = str(tmp_path)
    # budget 8: plain done (metrics), Mean Teacher interrupted; budget 4 (self-training's folder): plain model trained
    _touch(os.path.join(budget_folder(out, 0, 8), "labeled_1", "metrics", "nnUNetTrainerBudget.json"))
    _touch(os.path.join(_fold(out, 8, 1, MT), "checkpoint_latest.pth"), "")
    _touch(os.path.join(_fold(out, 4, 1, "nnUNetTrainerBudget"), "checkpoint_final.pth"), "")
    _record(out, 8, 1, "nnUNetTrainerBudget", 0.5)
    _record(out, 4, 1, "nnUNetTrainerBudget", 0.3)
    _record(out, 4, 1, "nnUNetTrainerBudget_other", 9.0)  # another trainer's rate is not used
    calls = invocations([8], ["plain", "self_training", MT, "ceiling"], [1], 4, iterations=2)
    cells = plan_cells(out, 0, calls)
    status = {(c.folder_budget, c.n_labeled, c.row): (c.status, c.iterations_left) for c in cells}
    assert status == {(8, 1, "nnUNetTrainerBudget"): ("done", 0),
                      (8, 1, MT): ("interrupted", 8),
                      (4, 1, "SelfTraining"): ("to train", 4),  # 2 x 4 iterations, the first training exists
                      (8, 4, "nnUNetTrainerBudget"): ("to train", 8)}  # the ceiling
    rates = measured_rates(out)
    assert rates["nnUNetTrainerBudget"] == 0.4 and MT not in rates  # median of 0.5 and 0.3
    lines = preview_lines(out, cells, rates)
    assert any("[done]" in line and "nnUNetTrainerBudget" in line for line in lines)
    assert any(MT in line and "at most 8 iterations" in line and "no training of it or of another variant" in line
               for line in lines)
    assert lines[-1].startswith("3 of 4 cells to train, 20 training iterations")
    assert f"plus 1 cell(s) of unknown rate ({MT})" in lines[-1]


def test_everything_done_leaves_nothing_to_train(tmp_path):
    out = str(tmp_path)
    _touch(os.path.join(budget_folder(out, 0, 8), "labeled_1", "metrics", "nnUNetTrainerBudget.json"))
    _touch(os.path.join(budget_folder(out, 0, 4), "labeled_1", "self_training", "metrics",
                        "nnUNetTrainerBudget.json"))
    cells = plan_cells(out, 0, invocations([8], ["plain", "self_training"], [1], None, iterations=2))
    assert [c.status for c in cells] == ["done", "done"]
    assert preview_lines(out, cells, {})[-1].startswith("0 of 2 cells to train, 0 training iterations (")


def test_a_variant_never_trained_in_the_folder_is_estimated_from_the_other_variants_of_its_trainer(tmp_path):
    out = str(tmp_path)
    _record(out, 8, 1, "nnUNetTrainerMeanTeacher_randomStart", 0.6)
    _record(out, 4, 1, "nnUNetTrainerMeanTeacher_noAlignment", 0.8)
    _record(out, 4, 1, "nnUNetTrainerMeanTeacherX", 9.0)  # another trainer, not a variant
    cells = plan_cells(out, 0, invocations([8], ["nnUNetTrainerMeanTeacher_warmStart25"], [1], None, iterations=2))
    lines = preview_lines(out, cells, measured_rates(out))
    assert "at 0.70 s/iteration (measured for other nnUNetTrainerMeanTeacher variants)" in lines[1], lines
    assert lines[-1].startswith("1 of 1 cells to train, 8 training iterations, about 0 min at the rates measured")
    assert "(1 cell(s) at the rate of other variants of their trainer)" in lines[-1] and "unknown" not in lines[-1]
