"""scripts/device/acdc_gpu.sh, the one-call GPU run, end to end on the CPU with a token budget, the way it runs on
the device: a Python without this package installed (scripts/device/dryrun_env.sh: dependencies and the working
tree on PYTHONPATH, nnU-Net's commands as shims, no nnUNetv2_mona_* commands), on a tiny fake ACDC h5 folder.
Plus the budget arithmetic of scripts/device/size_budget.py on made-up measurements."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE = os.path.join(ROOT, "scripts", "device")
sys.path.insert(0, DEVICE)
import size_budget  # noqa: E402

# the N = 1 / 3 / 7 labeled lists of the converter need these patients; 2 more unlabeled, 2 evaluation patients
TRAIN_PATIENTS = [99, 38, 50, 100, 58, 21, 49, 20, 72]
EVAL_PATIENTS = [28, 85]


def fake_heart(rng, z: int, shape=(48, 40)):
    """(image in [0, 1], label 0..3): an LV disk (3) in a MYO ring (2), an RV blob (1) beside it, noise."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    image = np.empty((z,) + shape, np.float32)
    label = np.zeros((z,) + shape, np.uint8)
    for k in range(z):
        cy, cx, r = 24 + rng.integers(-3, 4), 22 + rng.integers(-3, 4), 6 + k % 2
        d = np.hypot(yy - cy, xx - cx)
        label[k][np.hypot(yy - cy, xx - cx + 11) < 5] = 1
        label[k][d < r + 3] = 2
        label[k][d < r] = 3
        image[k] = np.choose(label[k], [0.1, 0.5, 0.35, 0.8]) + rng.normal(0, 0.05, shape)
    return np.clip(image, 0, 1), label


def make_fake_acdc(folder):
    """ACDC in the SSL4MIS h5 format: training volumes as slice files, evaluation volumes whole."""
    rng = np.random.default_rng(0)
    data = folder / "data"
    data.mkdir(parents=True)
    train = [f"patient{p:03d}_frame{f:02d}" for p in TRAIN_PATIENTS for f in (1, 2)]
    val = [f"patient{p:03d}_frame{f:02d}" for p in EVAL_PATIENTS for f in (1, 2)]
    for name in train:
        image, label = fake_heart(rng, 3)
        for k in range(3):
            with h5py.File(data / f"{name}_slice_{k + 1}.h5", "w") as f:
                f.create_dataset("image", data=image[k])
                f.create_dataset("label", data=label[k])
    for name in val:
        image, label = fake_heart(rng, 3)
        with h5py.File(data / f"{name}.h5", "w") as f:
            f.create_dataset("image", data=image)
            f.create_dataset("label", data=label)
    (folder / "train.list").write_text("\n".join(train) + "\n")
    (folder / "val.list").write_text("\n".join(val) + "\n")
    return folder


def test_device_script_cpu_token_budget(tmp_path):
    acdc = make_fake_acdc(tmp_path / "ACDC")
    env_dir, out, work = tmp_path / "env", tmp_path / "out", tmp_path / "work"
    subprocess.run(["bash", os.path.join(DEVICE, "dryrun_env.sh"), str(env_dir)], check=True,
                   env=dict(os.environ, PYTHON=sys.executable), stdout=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet") and k != "PYTHON"}
    env.update(OMP_NUM_THREADS="1", nnUNet_n_proc_DA="0")
    command = (f"source {env_dir}/env.sh && bash {DEVICE}/acdc_gpu.sh --device cpu --acdc {acdc} --epochs 2 "
               f"--iterations 2 --bench_iterations 1 --bench_warmup 0 --da_batches 1 --val_iterations 1 "
               f"--extra_labeled '' --disable_tta --budget_s 2400 --out {out} --work {work}")
    done = subprocess.run(["bash", "-c", command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=2700)
    assert done.returncode == 0, done.stdout[-8000:]
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["device"] == "cpu" and results["protocol"]["epochs"] == 2
    assert results["protocol"]["evaluation"]["n_volumes"] == 4  # val.list = imagesTs / labelsTs
    assert [(r["trainer"], r["status"]) for r in results["runs"]] == [
        ("nnUNetTrainerBudget", "ok"), ("nnUNetTrainerMeanTeacher", "ok"), ("nnUNetTrainerMONA", "ok")]
    cost = (out / "cost.md").read_text()
    for trainer in ("nnUNetTrainer ", "nnUNetTrainerMeanTeacher ", "nnUNetTrainerMONA "):
        assert f"| {trainer}|" in cost and "estimated" not in cost
    sizing = json.loads((out / "sizing.json").read_text())["chosen"]
    assert sizing["labeled"] == [3] and sizing["trainings"] == 3
    assert (out / "results.md").is_file() and (out / "results.png").is_file() and (out / "logs").is_dir()


def _measurements(work, g, da, semi=(False, True, True), wall=20.0):
    names = ["nnUNetTrainer", "nnUNetTrainerMeanTeacher", "nnUNetTrainerMONA"]
    for name, s, u in zip(names, g, semi):
        (work / f"iter_{name}.json").write_text(json.dumps(
            [{"trainer": name, "batch": f"12+{12 if u else 0}", "mean_s": s, "std_s": 0.0, "peak_mb": 1000 * s}]))
        (work / f"iter_{name}.wall").write_text(str(wall))
    (work / "da.json").write_text(json.dumps([{"trainer": "nnUNetTrainer", "batch": "24+0", "da_core_s": da[0]},
                                              {"trainer": "nnUNetTrainerMeanTeacher", "batch": "12+12",
                                               "da_core_s": da[1]}]))


def _size(tmp_path, capsys, *extra):
    """(chosen budget, the shell line printed for eval)."""
    size_budget.main(["--work", str(tmp_path), "--out", str(tmp_path / "out"), "--cores", "16", *extra])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads((tmp_path / "out" / "sizing.json").read_text())["chosen"], line


def test_sizing_gpu_and_augmentation_limits(tmp_path, capsys):
    _measurements(tmp_path, g=(0.05, 0.08, 0.12), da=(0.3, 0.5))
    chosen, line = _size(tmp_path, capsys, "--remaining_s", "360", "--extra_labeled")
    # 3 trainings: k = (16 - 3) // (1 + 1.5 + 1.5) = 3 workers (+2 unlabeled for the semi-supervised ones)
    assert chosen["n_proc_DA"] == 3 and chosen["workers_per_training"] == [3, 5, 5]
    assert chosen["gpu_s_per_iteration"] == pytest.approx(0.75 * 0.25)
    assert chosen["limited_by"] == "GPU" and chosen["predicted_wall_s"] <= 360 and chosen["fits"]
    assert chosen["epochs"] * chosen["iterations"] == chosen["total_iterations"] > 500
    assert line.startswith(f"EPOCHS_SIZED={chosen['epochs']} ITERATIONS_SIZED={chosen['iterations']} LABELED='3'")
    assert "| nnUNetTrainerMONA | 12+12 | 0.1200 | 120 | 2.40 | 2.40 | 0.500 |" in \
        (tmp_path / "out" / "cost.md").read_text()
    # slow augmentation: the workers, not the GPU, set the pace
    _measurements(tmp_path, g=(0.05, 0.08, 0.12), da=(3.0, 5.0))
    assert _size(tmp_path, capsys, "--remaining_s", "360", "--extra_labeled")[0]["limited_by"] == "augmentation"


def test_sizing_adds_labeled_counts_only_when_they_fit(tmp_path, capsys):
    _measurements(tmp_path, g=(0.01, 0.015, 0.02), da=(0.1, 0.1))
    assert _size(tmp_path, capsys, "--remaining_s", "3000")[0]["labeled"] == [3, 1, 7]
    assert _size(tmp_path, capsys, "--remaining_s", "200")[0]["labeled"] == [3]
    # a failed measurement (MONA's file missing) becomes a flagged estimate, the sizing still answers
    os.remove(tmp_path / "iter_nnUNetTrainerMONA.json")
    chosen, _ = _size(tmp_path, capsys, "--remaining_s", "300", "--extra_labeled")
    assert chosen["epochs"] >= 2 and "estimated" in (tmp_path / "out" / "cost.md").read_text()


def test_seeds_script_refuses_bad_input_with_a_message(tmp_path):
    """scripts/device/acdc_seeds_gpu.sh: no jobs file, an incomplete --pack and an unknown option each stop
    at once (exit 2) and say what is missing, before anything is unpacked or trained."""
    script = os.path.join(DEVICE, "acdc_seeds_gpu.sh")
    runs = {
        "no jobs": ([], "--jobs FILE is required"),
        "pack without data": (["--pack", "--pre", str(tmp_path), "--raw", str(tmp_path), "--splits1", "x"],
                              "--pack needs --pre"),
        "unknown option": (["--epoch", "3"], "unknown option --epoch"),
    }
    for name, (args, message) in runs.items():
        out = subprocess.run(["bash", script, "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and message in out.stderr, (name, out.returncode, out.stderr)
    assert not (tmp_path / "work").exists()  # nothing was started


@pytest.mark.parametrize("jobs_file", sorted(f for f in os.listdir(DEVICE) if f.startswith("acdc_seeds_jobs")))
def test_jobs_files_name_known_trainers(jobs_file):
    """Every line of a device jobs file is 'TAG TRAINER LABELED SEED' with a trainer this package has (or
    SelfTraining), 1 or 3 labeled, an integer seed, unique tags: a typo would cost device minutes. A fifth column
    (settings JSON for the removed nnUNet_mona_trainer_settings) would make the trainer refuse to start: the line
    must name the variant class instead."""
    from nnunet_mona import trainers
    from nnunet_mona.trainers.removed_overrides import TRAINER_SETTINGS_VARIABLE, replacement_message
    tags = []
    with open(os.path.join(DEVICE, jobs_file)) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            tag, trainer, labeled, seed, *settings = line.split(maxsplit=4)
            assert trainer == "SelfTraining" or hasattr(trainers, trainer), (jobs_file, line)
            assert labeled in ("1", "3") and seed.isdigit(), (jobs_file, line)
            assert not settings, (jobs_file, line, replacement_message(trainer, {TRAINER_SETTINGS_VARIABLE:
                                                                               settings[0].strip()}))
            tags.append(tag)
    assert tags and len(tags) == len(set(tags)), jobs_file
