"""nnUNetv2_mona_benchmark / nnUNetv2_mona_evaluate: metric properties (fast) and one tiny end-to-end run on CPU
(plan -> train 2 trainers x 2 labeled counts -> predict -> evaluate -> report), then a resume that skips everything,
then one pretraining chain (MixCL pretraining + nnUNetTrainerBudget) for one labeled count."""
import json
import os
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.distance import cdist

from conftest import benchmark_dataset_with_splits, run_cmd
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
    assert r["summary"]["volume_ratio"] == {"1": {"total": 1.0, "median": 1.0}, "2": {"total": 0.0, "median": 0.0}}
    over = gt.copy()
    over[1, 4:11, 4:11] = np.where(gt[1, 4:11, 4:11] == 2, 2, 1)  # class 1 grown by one voxel all round: 49 / 25
    img = sitk.GetImageFromArray(over)
    img.SetSpacing((1.0, 1.0, 4.0))
    sitk.WriteImage(img, str(pred_dir / "case1.nii.gz"))
    grown = evaluate_folders(str(pred_dir), str(gt_dir))
    assert grown["summary"]["volume_ratio"]["1"]["median"] == pytest.approx(49 / 25)
    assert "| 1.96 |" in markdown_table(grown)
    img = sitk.GetImageFromArray(pred)
    img.SetSpacing((1.0, 1.0, 4.0))
    sitk.WriteImage(img, str(pred_dir / "case1.nii.gz"))
    out = run_cmd([os.path.join(BIN, "nnUNetv2_mona_evaluate"), "-p", str(pred_dir), "-g", str(gt_dir),
                   "-o", str(tmp_path / "m.json"), "--labels", "1", "2", "--names", "RV", "MYO"])
    assert "| RV | 100.0 |" in out
    assert json.load(open(tmp_path / "m.json"))["per_volume"]["case1"]["MYO"]["mm"]["hd95"] is None


# ------------------------------------------------------------------------------------------------ chains
def test_chain_specs_and_layout():
    from nnunet_mona.benchmark.chains import check_specs, row_name
    from nnunet_mona.benchmark.layout import Layout
    from nnunet_mona.benchmark.processes import BenchmarkError
    specs = ["nnUNetTrainerBudget", "nnUNetTrainerMixCLPretrain+nnUNetTrainerBudget",
             "nnUNetTrainerACTIONPretrainEncoder+nnUNetTrainerACTIONPretrain+nnUNetTrainerACTION"]
    assert check_specs(specs) == ["nnUNetTrainerBudget", "nnUNetTrainerMixCLPretrain", "nnUNetTrainerACTIONPretrainEncoder",
                                  "nnUNetTrainerACTIONPretrain", "nnUNetTrainerACTION"]
    assert row_name(specs[1]) == "nnUNetTrainerMixCLPretrain + nnUNetTrainerBudget" and row_name(specs[0]) == specs[0]
    for bad, message in ((["A+B", "A+B"], "Duplicate"), (["A++B"], "Empty"), (["+A"], "Empty"), (["A+ B"], "Empty"),
                         (["A+B+A"], "twice"), (["A+SelfTraining"], "first stage")):
        with pytest.raises(BenchmarkError, match=message):
            check_specs(bad)
    lay = Layout("/out", "Dataset1_X")
    single, chain = lay.run_paths(3, specs[0]), lay.run_paths(3, specs[1])
    # a single trainer keeps the old layout; a chain has its own nnUNet_results, its last stage is evaluated
    assert single.fold_folder("nnUNetTrainerBudget") == \
        "/out/labeled_3/nnUNet_results/Dataset1_X/nnUNetTrainerBudget__nnUNetPlans__2d/fold_0"
    assert (single.predictions, single.metrics) == ("/out/labeled_3/predictions/nnUNetTrainerBudget",
                                                    "/out/labeled_3/metrics/nnUNetTrainerBudget.json")
    assert chain.results_root == f"/out/labeled_3/chains/{specs[1]}/nnUNet_results"
    assert chain.fold_folder("nnUNetTrainerBudget").startswith(chain.results_root + "/Dataset1_X/nnUNetTrainerBudget__")
    assert chain.final == "nnUNetTrainerBudget" and chain.predictions.startswith(chain.results_root[:-len("nnUNet_results")])
    assert len({single.metrics, chain.metrics, single.train_log("nnUNetTrainerBudget"),
                chain.train_log("nnUNetTrainerBudget")}) == 4


def test_chain_first_stage_is_the_rows_training_and_a_newer_one_restarts_the_next_stage(tmp_path):
    """A chain's first stage trains in (or reuses) the folder of that trainer's own row; a later stage older than the
    checkpoint it started from is trained again; a chain folder with its own finished first stage keeps it."""
    from types import SimpleNamespace
    from nnunet_mona.benchmark.layout import Layout
    from nnunet_mona.benchmark.run_benchmark import Benchmark
    lay = Layout(str(tmp_path), "Dataset1_X")
    bench = Benchmark(SimpleNamespace(checkpoint="student"), lay, "", "", [], [1], ["A"])
    calls = []
    bench._train_stage = lambda n, paths, stage, pretrained, restart, prefix: calls.append(
        (paths.fold_folder(stage), pretrained, restart, prefix)) or False
    spec = "nnUNetTrainerBudget+nnUNetTrainerMeanTeacher_randomStart"
    chain, plain = lay.run_paths(3, spec), lay.run_paths(3, "nnUNetTrainerBudget")
    plain_final = os.path.join(plain.fold_folder("nnUNetTrainerBudget"), "checkpoint_final.pth")
    mt_final = os.path.join(chain.fold_folder("nnUNetTrainerMeanTeacher_randomStart"), "checkpoint_final.pth")

    def touch(path, mtime):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
        os.utime(path, (mtime, mtime))

    bench.train(3, chain, "[N=3]")
    assert [c[0] for c in calls] == [plain.fold_folder("nnUNetTrainerBudget"),
                                     chain.fold_folder("nnUNetTrainerMeanTeacher_randomStart")]
    assert calls[1][1] == plain_final and not calls[1][2] and "(= its own row's training)" in calls[0][3]
    touch(plain_final, 1000)
    touch(mt_final, 2000)
    calls.clear()
    bench.train(3, chain, "[N=3]")
    assert not calls[1][2]  # the MT stage is newer than the plain model it started from
    touch(plain_final, 3000)  # the plain row was trained again after the chain
    calls.clear()
    bench.train(3, chain, "[N=3]")
    assert calls[1][2]
    own_first = os.path.join(chain.fold_folder("nnUNetTrainerBudget"), "checkpoint_final.pth")
    touch(own_first, 500)  # a chain folder from before the sharing
    calls.clear()
    bench.train(3, chain, "[N=3]")
    assert calls[0][0] == chain.fold_folder("nnUNetTrainerBudget") and calls[1][1] == own_first and not calls[1][2]


def test_self_training_as_first_stage_starts_the_next_stage_from_the_self_training_rows_model(tmp_path):
    """``SelfTraining+B``: the SelfTraining row's pipeline (shared with that row) runs first, B trains from its
    retrained model in the chain's folder, and starts over when the self-training model is newer than B's."""
    from types import SimpleNamespace
    from nnunet_mona.benchmark.chains import check_specs
    from nnunet_mona.benchmark.layout import Layout
    from nnunet_mona.benchmark.run_benchmark import Benchmark
    spec = "SelfTraining+nnUNetTrainerMeanTeacher_randomStart"
    assert check_specs([spec]) == ["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher_randomStart"]
    lay = Layout(str(tmp_path), "Dataset1_X")
    bench = Benchmark(SimpleNamespace(checkpoint="student"), lay, "", "", [], [1], ["A"])
    self_trained, trained = [], []
    bench.self_train = lambda n, paths, prefix: self_trained.append(paths.base)
    bench._train_stage = lambda n, paths, stage, pretrained, restart, prefix: trained.append(
        (paths.fold_folder(stage), pretrained, restart)) or False
    chain, st = lay.run_paths(1, spec), lay.run_paths(1, "SelfTraining")
    st_final = os.path.join(st.fold_folder("nnUNetTrainerBudget"), "checkpoint_final.pth")
    mt_final = os.path.join(chain.fold_folder("nnUNetTrainerMeanTeacher_randomStart"), "checkpoint_final.pth")
    bench.train(1, chain, "[N=1]")
    assert self_trained == [st.base] and st.base.endswith("labeled_1/self_training")
    assert trained == [(chain.fold_folder("nnUNetTrainerMeanTeacher_randomStart"), st_final, False)]
    for path, mtime in ((st_final, 2000), (mt_final, 1000)):  # self-training redone after the chain's MT stage
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
        os.utime(path, (mtime, mtime))
    trained.clear()
    bench.train(1, chain, "[N=1]")
    assert trained == [(chain.fold_folder("nnUNetTrainerMeanTeacher_randomStart"), st_final, True)]


# ------------------------------------------------------------------------------------------------ end to end
BENCH_ID = 997
TRAINERS = ["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher_randomStart"]


@pytest.fixture(scope="module")
def benchmark_dataset(nnunet_dirs):
    # N labeled patients = the first 2 N frames (2 per patient)
    ds = benchmark_dataset_with_splits(nnunet_dirs["raw"], BENCH_ID, "MonaBenchmark", 3,
                                       lambda roles: {n: roles["labeled"][:2 * n] for n in (1, 2)})
    return {**ds, **nnunet_dirs}


def _bench_cmd(output):
    return [os.path.join(BIN, "nnUNetv2_mona_benchmark"), "-d", str(BENCH_ID), "--labeled", "1", "2",
            "--trainers", *TRAINERS, "--epochs", "1", "--iterations", "2", "--val_iterations", "1",
            "--device", "cpu", "--parallel", "2", "--np", "1", "--disable_tta", "-o", output]


def _bench_env():
    env = os.environ.copy()
    env.update({"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"})  # no augmentation workers: fast start-up
    return env


def test_benchmark_trainings_skip_nnunets_own_final_validation_unless_kept(monkeypatch):
    """nnUNetv2_train's validation predicts the split's validation cases, which the benchmark never reads (it scores
    its own evaluation set): its trainings skip it, unless the user's environment keeps it."""
    import argparse
    from nnunet_mona.benchmark.layout import Layout
    from nnunet_mona.benchmark.run_benchmark import Benchmark
    args = argparse.Namespace(epochs=2, iterations=3, val_iterations=None, seed=None)
    bench = Benchmark(args, Layout("/out", "Dataset1_X"), "/img", "/lab", ["c1"], [1], ["a"])
    monkeypatch.delenv("nnUNet_mona_skip_validation", raising=False)
    env = bench.env_for(1, "/out/labeled_1/nnUNet_results")
    assert env["nnUNet_mona_skip_validation"] == "1" and env["nnUNet_mona_epochs"] == "2"
    monkeypatch.setenv("nnUNet_mona_skip_validation", "0")
    assert bench.env_for(1, "/out/labeled_1/nnUNet_results")["nnUNet_mona_skip_validation"] == "0"


def test_unknown_trainer_and_missing_split_fail_fast(benchmark_dataset, tmp_path):
    import subprocess
    from nnunet_mona.benchmark.preparation import check_trainers
    from nnunet_mona.benchmark.processes import BenchmarkError
    with pytest.raises(BenchmarkError, match=r"Unknown trainer\(s\): \['nnUNetTrainerDoesNotExist'\]"):
        check_trainers(["nnUNetTrainerBudget", "nnUNetTrainerDoesNotExist"])
    with pytest.raises(BenchmarkError, match="nnUNetTrainerBudget"):
        check_trainers(["nnUNetTrainer"])  # stock trainer: ignores the budget variables
    cmd = _bench_cmd(str(tmp_path / "x"))
    cmd[cmd.index("--labeled") + 1] = "5"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_bench_env(), timeout=120)
    assert proc.returncode == 1 and "splits_final_5labeled.json does not exist" in proc.stderr
    assert not os.path.exists(tmp_path / "x")  # failed before any work


def test_benchmark_end_to_end_and_resume(benchmark_dataset, tmp_path):
    output = str(tmp_path / "bench")
    first = run_cmd(_bench_cmd(output), timeout=1800, env=_bench_env())  # minutes when idle
    for name in ("results.json", "results.md", "results.png"):
        assert os.path.isfile(os.path.join(output, name)), (name, first[-3000:])
    results = json.load(open(os.path.join(output, "results.json")))
    runs = results["runs"]
    assert sorted((r["n_labeled"], r["trainer"]) for r in runs) == sorted((n, t) for n in (1, 2) for t in TRAINERS)
    for r in runs:
        assert r["status"] == "ok", r
        for protocol in ("mona", "mm"):
            d = r["summary"][protocol]["mean"]["dice"]
            assert 0.0 <= d <= 1.0
        assert r["train"]["epochs_completed"] == 1 and r["train"]["seconds_per_iteration"] > 0
        assert r["train"]["peak_gpu_memory_bytes"] is None  # CPU
    protocol = results["protocol"]
    assert protocol["epochs"] == 1 and protocol["iterations_per_epoch"] == 2 and protocol["device"] == "cpu"
    assert protocol["splits"]["1"]["labeled_cases"] == 2 and protocol["splits"]["2"]["unlabeled_cases"] == 4
    assert protocol["evaluation"]["n_volumes"] == len(benchmark_dataset["roles"]["test"])
    # each N trained with its own split, in its own results folder; the user's preprocessed folder is untouched
    for n in (1, 2):
        split = json.load(open(os.path.join(output, f"labeled_{n}", "nnUNet_preprocessed",
                                            f"Dataset{BENCH_ID}_MonaBenchmark", "splits_final.json")))
        assert len(split[0]["train"]) == 2 * n
    assert not os.path.exists(os.path.join(benchmark_dataset["preprocessed"], f"Dataset{BENCH_ID}_MonaBenchmark",
                                           "splits_final.json"))
    md = open(os.path.join(output, "results.md")).read()
    # 2 N x 2 tables
    assert md.count("| nnUNetTrainerMeanTeacher_randomStart |") == 4 and "## 2 labeled patient(s)" in md

    start = time.time()
    again = run_cmd(_bench_cmd(output), timeout=300, env=_bench_env())
    assert "RESUMED: every step was already complete, nothing was run" in again, again[-3000:]
    assert again.count("[skip] training") == 4 and "continuing" not in again
    assert time.time() - start < 150  # shared CI machines are slow
    assert json.load(open(os.path.join(output, "results.json")))["runs"] == runs

    # a pretraining chain for one N: its own results folder, its first stage trained in the folder of that
    # trainer's own row; the plain nnUNetTrainerBudget row is not retrained, and the chain
    # nnUNetTrainerBudget+nnUNetTrainerMeanTeacher starts from that row's model instead of training it again
    chain = "nnUNetTrainerMixCLPretrain+nnUNetTrainerBudget"
    warm = "nnUNetTrainerBudget+nnUNetTrainerMeanTeacher_randomStart"
    plain = os.path.join(output, "labeled_1", "nnUNet_results", f"Dataset{BENCH_ID}_MonaBenchmark",
                         "nnUNetTrainerBudget__nnUNetPlans__2d", "fold_0", "checkpoint_final.pth")
    plain_mtime = os.path.getmtime(plain)
    cmd = _bench_cmd(output)
    cmd[cmd.index("--labeled") + 1:cmd.index("--epochs")] = ["1", "--trainers", "nnUNetTrainerBudget", chain, warm]
    third = run_cmd(cmd, timeout=600, env=_bench_env())
    all_runs = json.load(open(os.path.join(output, "results.json")))["runs"]
    # the rows of the first command that this one did not run stay in the report, marked with that command
    assert {(r["n_labeled"], r["trainer"]) for r in all_runs if r.get("earlier_command")} == \
        {(1, "nnUNetTrainerMeanTeacher_randomStart"), (2, "nnUNetTrainerBudget"),
         (2, "nnUNetTrainerMeanTeacher_randomStart")}
    rows = {r["trainer"]: r for r in all_runs if r["n_labeled"] == 1 and not r.get("earlier_command")}
    row = rows["nnUNetTrainerMixCLPretrain + nnUNetTrainerBudget"]
    assert row["status"] == "ok", (row, third[-3000:])
    assert 0.0 <= row["summary"]["mona"]["mean"]["dice"] <= 1.0
    chain_root = os.path.join(output, "labeled_1", "chains", chain, "nnUNet_results")
    assert row["fold_folder"].startswith(chain_root) and rows["nnUNetTrainerBudget"]["fold_folder"] == os.path.dirname(plain)
    assert os.path.getmtime(plain) == plain_mtime and "[skip] training" in third
    assert [s["stage"] for s in row["train"]["stages"]] == chain.split("+")
    log = open(row["train_log"]).read()
    pretrained = os.path.join(output, "labeled_1", "nnUNet_results", f"Dataset{BENCH_ID}_MonaBenchmark",
                              "nnUNetTrainerMixCLPretrain__nnUNetPlans__2d", "fold_0", "checkpoint_final.pth")
    assert f"Loading pretrained weights from file  {pretrained}" in log, log[-3000:]
    warm_row = rows["nnUNetTrainerBudget + nnUNetTrainerMeanTeacher_randomStart"]
    assert warm_row["status"] == "ok", (warm_row, third[-3000:])
    assert f"Loading pretrained weights from file  {plain}" in open(warm_row["train_log"]).read()
    assert "stage Budget (= its own row's training): [skip] training" in third
    assert os.path.getmtime(plain) == plain_mtime
