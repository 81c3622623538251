"""Shared fixtures: a tiny synthetic dataset, planned and preprocessed once per test run.

nnU-Net reads nnUNet_raw / nnUNet_preprocessed / nnUNet_results from the environment at call
time (2.8.1), so setting them here is enough for in-process calls and for subprocesses.
"""
import json
import os
import shutil
import subprocess
import sys

# before torch loads OpenMP (here and in every training / prediction subprocess): threads that spin while
# they wait steal the cores of nnU-Net's augmentation workers and of parallel test processes (on 2 cores beside
# another job a small forward/backward is about ten times slower spinning than passive)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# no test reads the validation nnUNetv2_train runs after training (it spawns export and scoring processes, most of a
# tiny training's time) except the ones about that validation, which set nnUNet_mona_skip_validation=0
os.environ.setdefault("nnUNet_mona_skip_validation", "1")

import pytest  # noqa: E402

from nnunet_mona.cli import configure_ext_trainer_in_process  # noqa: E402
from nnunet_mona.demo.synthetic_dataset import write_synthetic_dataset  # noqa: E402

# Dataset ids used by the tests (nothing else may use them inside the test run's folder).
REAL_UNLABELED_ID = 990  # unlabeled images in imagesUnlabeled/
SIMULATED_ID = 991  # unlabeled cases are training cases hidden by a split
HIDDEN_LABEL_ID = 988  # as 991, and the unlabeled cases' preprocessed labels are moved away


# the longest test files (minutes of nnU-Net trainings each, 2-core CPU) go first, so that with two test processes
# (pytest.ini) neither is left running one of them alone at the end
LONGEST_FIRST = ("test_five_fold_workflow.py", "test_semi_supervised_gain.py", "test_benchmark.py", "test_scaling.py",
                 "test_device_script.py", "test_mean_teacher_end_to_end.py", "test_benchmark_protocol.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def write_identical_folds(ds: dict, n_folds: int) -> str:
    """splits_final.json of ``ds`` (a simulated-scarcity dataset fixture) with ``n_folds`` identical folds: its
    labeled cases as train and val, the rest unlabeled; modules keep their output folders apart by fold number.
    Returns the preprocessed dataset folder."""
    pre = os.path.join(ds["preprocessed"], ds["name"])
    labeled, unlabeled = ds["roles"]["labeled"], ds["roles"]["unlabeled"]
    with open(os.path.join(pre, "splits_final.json"), "w") as f:
        json.dump([{"train": labeled, "val": labeled, "unlabeled": unlabeled}] * n_folds, f)
    return pre


def benchmark_dataset_with_splits(raw_root: str, dataset_id: int, name: str, seed: int, train_for) -> dict:
    """A synthetic dataset for the benchmark commands: 4 patients (2 frames each) all in imagesTr/labelsTr, 1 test
    patient, and one splits_final_<N>labeled.json per N of ``train_for(roles)`` ({N: training cases}), every other
    training case unlabeled. Returns {'raw': dataset folder, 'roles': ...}."""
    from nnunet_mona.demo.synthetic_dataset import write_synthetic_dataset
    roles = write_synthetic_dataset(raw_root, dataset_id=dataset_id, dataset_name=name, n_labeled_patients=2,
                                    n_unlabeled_patients=2, n_test_patients=1, size=(64, 64), n_slices=2,
                                    unlabeled_as_training_cases=True, seed=seed)
    raw = os.path.join(raw_root, f"Dataset{dataset_id}_{name}")
    everything = roles["labeled"] + roles["unlabeled"]
    for n, train in train_for(roles).items():
        with open(os.path.join(raw, f"splits_final_{n}labeled.json"), "w") as f:
            json.dump([{"train": train, "val": train, "unlabeled": [c for c in everything if c not in train]}], f)
    return {"raw": raw, "roles": roles}


def fake_batches(trainer, batch: int = 2):
    """Random labeled ({'data', 'target': deep-supervision list}) and unlabeled ({'data_weak', 'data_strong',
    'valid_mask'}) batches of ``batch`` patches in ``trainer``'s patch size and label count (4 labels)."""
    import torch
    patch = trainer.configuration_manager.patch_size
    scales = trainer._get_deep_supervision_scales()
    target = [torch.randint(0, 4, (batch, 1, *[int(round(p * s)) for p, s in zip(patch, sc)])) for sc in scales]
    labeled = {"data": torch.randn(batch, 1, *patch), "target": target}
    unlabeled = {"data_weak": torch.randn(batch, 1, *patch), "data_strong": torch.randn(batch, 1, *patch),
                 "valid_mask": torch.ones(batch, 1, *patch, dtype=torch.bool)}
    return labeled, unlabeled


def run_cmd(cmd, timeout=900, env=None):
    """Run a command, fail the test with its output if it fails. Returns stdout+stderr."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                          env=env if env is not None else os.environ.copy())
    if proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stdout[-6000:]}")
    return proc.stdout


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    dirs = {k: str(root / k) for k in ("raw", "preprocessed", "results")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    os.environ["nnUNet_raw"] = dirs["raw"]
    os.environ["nnUNet_preprocessed"] = dirs["preprocessed"]
    os.environ["nnUNet_results"] = dirs["results"]
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    os.environ["nnUNet_compile"] = "f"
    configure_ext_trainer_in_process()
    return dirs


def _plan_and_preprocess(dataset_id: int):
    run_cmd([os.path.join(os.path.dirname(sys.executable), "nnUNetv2_plan_and_preprocess"),
             "-d", str(dataset_id), "-c", "2d", "-np", "1", "--no_pbar"])


@pytest.fixture(scope="session")
def real_unlabeled_dataset(nnunet_dirs):
    """Dataset990: 3 labeled patients (6 cases) in imagesTr, 4 unlabeled patients (8 cases) in
    imagesUnlabeled, 1 test patient in imagesTs/labelsTs; planned and preprocessed (2d only)."""
    roles = write_synthetic_dataset(nnunet_dirs["raw"], dataset_id=REAL_UNLABELED_ID, n_labeled_patients=3,
                                    n_unlabeled_patients=4, n_test_patients=1, size=(64, 64), n_slices=2, seed=1)
    _plan_and_preprocess(REAL_UNLABELED_ID)
    return {"id": REAL_UNLABELED_ID, "name": "Dataset990_MonaSynthetic", "roles": roles, **nnunet_dirs}


@pytest.fixture(scope="session")
def simulated_scarcity_dataset(nnunet_dirs):
    """Dataset991: 7 patients (14 cases) all in imagesTr/labelsTr; tests hide some of them with a
    split's 'unlabeled' list. 1 test patient in imagesTs/labelsTs; planned and preprocessed (2d)."""
    roles = write_synthetic_dataset(nnunet_dirs["raw"], dataset_id=SIMULATED_ID, dataset_name="MonaSimulated",
                                    n_labeled_patients=3, n_unlabeled_patients=4, n_test_patients=1,
                                    size=(64, 64), n_slices=2, unlabeled_as_training_cases=True, seed=2)
    _plan_and_preprocess(SIMULATED_ID)
    return {"id": SIMULATED_ID, "name": "Dataset991_MonaSimulated", "roles": roles, **nnunet_dirs}


@pytest.fixture(scope="session")
def hidden_label_dataset(nnunet_dirs, tmp_path_factory):
    """Dataset988, shared by the trainer modules (MONA, ACTION, relational pretraining, MixCL,
    benchmark_iteration): 3 labeled patients (6 cases) and 4 'unlabeled' patients (8 cases) in
    imagesTr/labelsTr, 1 test patient in imagesTs/labelsTs; planned and preprocessed (2d, 64x64).

    The unlabeled cases are hidden by the split's 'unlabeled' list AND their preprocessed labels
    (<id>_seg.b2nd) are moved out of the dataset, so a trainer that reads one fails instead of
    silently training on it. Read-only for its users: copy what you need to change.

    splits_final.json has 3 folds with the same train (all labeled) and unlabeled lists and a
    1-case val set (short final validation). The folds only keep output folders apart where two
    modules train the same trainer class: fold 0 for test_mona_trainer, test_action and
    test_mixcl; fold 1 for test_relational_pretrain (its MONA fine-tune); fold 2 for
    test_benchmark_iteration (its trainers write a training log into their fold folder).
    """
    name = f"Dataset{HIDDEN_LABEL_ID}_MonaHiddenLabels"
    roles = write_synthetic_dataset(nnunet_dirs["raw"], dataset_id=HIDDEN_LABEL_ID, dataset_name="MonaHiddenLabels",
                                    n_labeled_patients=3, n_unlabeled_patients=4, n_test_patients=1,
                                    size=(64, 64), n_slices=2, unlabeled_as_training_cases=True, seed=3)
    _plan_and_preprocess(HIDDEN_LABEL_ID)
    pre = os.path.join(nnunet_dirs["preprocessed"], name)
    with open(os.path.join(pre, "splits_final.json"), "w") as f:
        json.dump([{"train": roles["labeled"], "val": [roles["labeled"][k]], "unlabeled": roles["unlabeled"]}
                   for k in range(3)], f)
    hidden = tmp_path_factory.mktemp("hidden_labels")
    for case in roles["unlabeled"]:
        shutil.move(os.path.join(pre, "nnUNetPlans_2d", f"{case}_seg.b2nd"), hidden)
    return {"id": HIDDEN_LABEL_ID, "name": name, "roles": roles, "pre": pre, **nnunet_dirs}
