"""scripts/benchmark_iteration.py end to end on CPU: nnUNetTrainer (the reference) and nnUNetTrainerMONA,
each in its own process (the default), 1 timed iteration each on conftest's Dataset988; the printed table
is parsed and checked against the plans."""
import math
import os
import sys

import pytest
from batchgenerators.utilities.file_and_folder_operations import load_json

from conftest import run_cmd

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "benchmark_iteration.py")
TRAINERS = ["nnUNetTrainer", "nnUNetTrainerMONA"]
# Not fold 'all': nnU-Net's 'all' takes every imagesTr case as labeled, including the unlabeled ones whose labels
# the fixture moved away (FileNotFoundError <id>_seg.b2nd), and the split's unlabeled pool is per fold. Not fold 0:
# instantiating a trainer writes a training log into its fold folder, and test_mona_trainer reads fold 0's logs.
FOLD = "2"
COLUMNS = ("trainer", "batch", "mean_s", "std_s", "memory", "x_time", "x_mem")


def _parse_table(stdout):
    """Rows under the '-----' rule of the printed table, as {trainer: {column: text}}."""
    lines = stdout.splitlines()
    rule = next(i for i, line in enumerate(lines) if line and set(line) == {"-"})
    assert lines[rule - 1].split()[:2] == ["trainer", "batch"], lines[rule - 1]
    rows = {}
    for line in lines[rule + 1:]:
        if not line.strip():
            break
        fields = line.split()
        assert len(fields) == len(COLUMNS), line
        rows[fields[0]] = dict(zip(COLUMNS, fields))
    return lines[:rule], rows


@pytest.fixture(scope="module")
def benchmark_table(hidden_label_dataset):
    ds = hidden_label_dataset
    env = dict(os.environ, nnUNet_n_proc_DA="0")  # loaders in-process: no worker start-up on a small CI box
    stdout = run_cmd([sys.executable, SCRIPT, "-d", str(ds["id"]), "-c", "2d", "-f", FOLD, "--device", "cpu",
                      "--iterations", "1", "--warmup", "0", "--trainers", *TRAINERS], env=env)
    head, rows = _parse_table(stdout)
    plans_batch = load_json(os.path.join(ds["pre"], "nnUNetPlans.json"))["configurations"]["2d"]["batch_size"]
    return {"stdout": stdout, "head": "\n".join(head), "rows": rows, "plans_batch": plans_batch, "ds": ds}


def test_each_trainer_ran_in_its_own_process_and_has_a_row(benchmark_table):
    stdout, rows = benchmark_table["stdout"], benchmark_table["rows"]
    assert list(rows) == TRAINERS  # table order = --trainers order, the first is the reference
    for t in TRAINERS:
        assert f"benchmarking {t} ..." in stdout
    head = benchmark_table["head"]
    assert benchmark_table["ds"]["name"] in head and "device cpu, 1 timed iterations after 0 warm-up" in head
    assert "+RSS MiB" in head and "CPU proxy" in head  # not CUDA: the memory column is the RSS proxy


def test_batch_column_splits_the_plans_batch(benchmark_table):
    rows, plans_batch = benchmark_table["rows"], benchmark_table["plans_batch"]
    assert rows["nnUNetTrainer"]["batch"] == f"{plans_batch}+0"
    labeled, unlabeled = (int(n) for n in rows["nnUNetTrainerMONA"]["batch"].split("+"))
    # B/2 labeled + B/2 unlabeled patches, as MONA's 4+4 (round half to even, at least 2 each)
    half = max(2, round(plans_batch / 2))
    assert labeled == unlabeled == half
    if plans_batch % 2 == 0 and plans_batch >= 4:
        assert labeled + unlabeled == plans_batch


def test_times_and_memory_are_positive_and_ratios_consistent(benchmark_table):
    rows = benchmark_table["rows"]
    for t, row in rows.items():
        mean_s, std_s, memory = float(row["mean_s"]), float(row["std_s"]), float(row["memory"])
        assert math.isfinite(mean_s) and mean_s > 0, row
        assert math.isfinite(memory) and memory > 0, row
        assert std_s == 0.0, row  # one timed iteration
    ref, mona = rows["nnUNetTrainer"], rows["nnUNetTrainerMONA"]
    assert ref["x_time"] == "1.00" and ref["x_mem"] == "1.00"
    # the ratio columns are MONA / reference of the columns printed beside them (3 and 1 decimals)
    assert float(mona["x_time"]) == pytest.approx(float(mona["mean_s"]) / float(ref["mean_s"]), rel=0.02, abs=0.01)
    assert float(mona["x_mem"]) == pytest.approx(float(mona["memory"]) / float(ref["memory"]), rel=0.05, abs=0.01)
    assert all(math.isfinite(float(r[c])) and float(r[c]) > 0 for r in rows.values() for c in ("x_time", "x_mem"))
