"""End to end on CPU with the stock nnU-Net commands: plan/preprocess (fixture) ->
nnUNetv2_train -tr nnUNetTrainerMeanTeacher -> --c resume -> nnUNetv2_predict (student and teacher).

Scarcity is simulated with a split whose 'unlabeled' cases lie in the labeled preprocessed folder;
their label files are moved away first, and every label file the training's processes open is traced
(``test_training_never_needed_the_unlabeled_cases_labels``).
"""
import json
import os
import shutil
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

from conftest import run_cmd

BIN = os.path.dirname(sys.executable)
TRAINER = "nnUNetTrainerMeanTeacher_randomStart"


def _budget_env(epochs, iterations=3):
    env = os.environ.copy()
    env.update({"nnUNet_mona_epochs": str(epochs), "nnUNet_mona_iterations": str(iterations),
                "nnUNet_mona_val_iterations": "1"})
    return env


# a sitecustomize.py on the training's PYTHONPATH: every process of it (workers included) appends to the log each
# label file ('<id>_seg.*') it opens with Python's open / os.open (audit hook) or with blosc2.open (nnU-Net's reader)
LABEL_TRACER = textwrap.dedent("""
    import os
    import sys

    _LOG = os.environ.get("MONA_TEST_LABEL_ACCESS_LOG")

    def _record(path):
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if isinstance(path, str) and "_seg." in os.path.basename(path):
            fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, (os.path.abspath(path) + "\\n").encode())
            os.close(fd)

    if _LOG:
        sys.addaudithook(lambda event, args: _record(args[0]) if event == "open" and args else None)
        import blosc2
        _blosc2_open = blosc2.open

        def _traced_open(urlpath, *args, **kwargs):
            _record(urlpath)
            return _blosc2_open(urlpath, *args, **kwargs)

        blosc2.open = _traced_open
""")


@pytest.fixture(scope="module")
def trained_mean_teacher(simulated_scarcity_dataset, tmp_path_factory):
    ds = simulated_scarcity_dataset
    pre = os.path.join(ds["preprocessed"], ds["name"])
    labeled, unlabeled = ds["roles"]["labeled"], ds["roles"]["unlabeled"]
    with open(os.path.join(pre, "splits_final.json"), "w") as f:
        json.dump([{"train": labeled, "val": labeled, "unlabeled": unlabeled}], f)
    # hide the unlabeled cases' labels: any attempt to read them now fails
    hidden = os.path.join(str(ds["preprocessed"]), "hidden_labels")
    os.makedirs(hidden, exist_ok=True)
    label_files = [os.path.join(pre, "nnUNetPlans_2d", f"{case}_seg.b2nd") for case in unlabeled]
    for path in label_files:
        shutil.move(path, hidden)
    tracer = tmp_path_factory.mktemp("label_tracer")
    (tracer / "sitecustomize.py").write_text(LABEL_TRACER)
    access_log = tracer / "label_files_opened.txt"
    env = _budget_env(2)
    env.update({"PYTHONPATH": os.pathsep.join(p for p in (str(tracer), env.get("PYTHONPATH", "")) if p),
                "MONA_TEST_LABEL_ACCESS_LOG": str(access_log)})
    # watch the hidden labels' places for the whole training
    present, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            present.update(p for p in label_files if os.path.exists(p))
            done.wait(0.2)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = run_cmd([os.path.join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", "0", "-tr", TRAINER,
                       "-device", "cpu"], env=env)
    finally:
        done.set()
        watcher.join()
    fold = os.path.join(ds["results"], ds["name"], f"{TRAINER}__nnUNetPlans__2d", "fold_0")
    final = os.path.join(fold, "checkpoint_final.pth")
    trained = torch.load(final, map_location="cpu", weights_only=False) if os.path.isfile(final) else None
    opened = access_log.read_text().split() if access_log.exists() else []
    return {"ds": ds, "fold": fold, "train_output": out, "pre": pre, "checkpoint_after_training": trained,
            "label_files_present_during_training": sorted(present), "label_files_opened": opened}


def test_training_outputs_and_loss_terms(trained_mean_teacher):
    fold = trained_mean_teacher["fold"]
    for name in ("checkpoint_final.pth", "checkpoint_final_teacher.pth", "progress.png"):
        assert os.path.isfile(os.path.join(fold, name)), name
    ckpt = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == TRAINER
    logging = ckpt["logging"]
    for key in ("train_sup", "train_unsup", "train_confident_fraction", "train_skipped_steps"):
        assert len(logging[key]) == 2, key
        assert np.all(np.isfinite(logging[key])), (key, logging[key])
    assert ckpt["semi_supervised"]["teacher"]["num_updates"].item() == 2 * 3
    # the teacher is an EMA of the student, not the student itself
    teacher = ckpt["semi_supervised"]["teacher"]
    diffs = [(teacher["model." + k].float() - v.float()).abs().max().item()
             for k, v in ckpt["network_weights"].items() if v.dtype.is_floating_point]
    assert max(diffs) > 0
    logs = [f for f in os.listdir(fold) if f.startswith("training_log")]
    text = open(os.path.join(fold, sorted(logs)[-1])).read()
    assert "loss terms" in text and "'unsup'" in text and "Unlabeled pool: 8 cases" in text


def test_resume_continues_everything(trained_mean_teacher):
    ds, fold = trained_mean_teacher["ds"], trained_mean_teacher["fold"]
    before = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    run_cmd([os.path.join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", "0", "-tr", TRAINER, "-device", "cpu", "--c"],
            env=_budget_env(3))
    after = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert after["current_epoch"] == 3
    # logger kept the first two epochs and appended the third
    assert len(after["logging"]["train_unsup"]) == 3
    assert after["logging"]["train_unsup"][:2] == before["logging"]["train_unsup"]
    # the teacher continued from its saved state (6 updates) instead of restarting from the student
    assert after["semi_supervised"]["teacher"]["num_updates"].item() == 3 * 3


def test_predict_with_student_and_teacher(trained_mean_teacher, tmp_path):
    ds = trained_mean_teacher["ds"]
    images = os.path.join(ds["raw"], ds["name"], "imagesTs")
    for chk in ("checkpoint_final.pth", "checkpoint_final_teacher.pth"):
        out = tmp_path / chk.replace(".pth", "")
        run_cmd([os.path.join(BIN, "nnUNetv2_predict"), "-i", images, "-o", str(out), "-d", str(ds["id"]), "-c", "2d",
                 "-tr", TRAINER, "-f", "0", "-chk", chk, "-device", "cpu", "-npp", "1", "-nps", "1",
                 "--disable_progress_bar"])
        predicted = sorted(p for p in os.listdir(out) if p.endswith(".nii.gz"))
        assert predicted == sorted(f"{c}.nii.gz" for c in ds["roles"]["test"])


def test_training_never_needed_the_unlabeled_cases_labels(trained_mean_teacher):
    """The training finished its two epochs on the unlabeled pool while no unlabeled case's label file existed, and
    none of its processes opened (or tried to open) one; it did open the labeled cases' labels (the trace works)."""
    t = trained_mean_teacher
    labeled, unlabeled = t["ds"]["roles"]["labeled"], t["ds"]["roles"]["unlabeled"]
    checkpoint = t["checkpoint_after_training"]
    assert checkpoint is not None and checkpoint["current_epoch"] == 2
    assert np.all(np.isfinite(checkpoint["logging"]["train_unsup"]))  # the unlabeled stream trained every epoch
    assert f"Unlabeled pool: {len(unlabeled)} cases" in t["train_output"] or \
        any(f"Unlabeled pool: {len(unlabeled)} cases" in open(os.path.join(t["fold"], f)).read()
            for f in os.listdir(t["fold"]) if f.startswith("training_log"))
    assert t["label_files_present_during_training"] == []

    def case_of(path):
        return os.path.basename(path).split("_seg.")[0]
    opened = {case_of(p) for p in t["label_files_opened"]}
    assert opened & set(unlabeled) == set(), sorted(opened & set(unlabeled))
    assert opened & set(labeled), t["label_files_opened"][:5]  # nnU-Net's labeled loader, seen by the trace


def test_trains_on_real_unlabeled_images(real_unlabeled_dataset):
    """Unlabeled data the other way: imagesUnlabeled/ preprocessed with the dataset's plans."""
    from nnunet_mona.data.unlabeled_preprocessing import preprocess_unlabeled

    ds = real_unlabeled_dataset
    pre = os.path.join(ds["preprocessed"], ds["name"])
    unlabeled_folder = os.path.join(pre, "nnUNetPlans_2d_unlabeled")
    results = os.path.join(ds["results"], ds["name"], f"{TRAINER}__nnUNetPlans__2d")
    try:
        ids = preprocess_unlabeled(ds["id"], "2d", num_processes=1, show_progress_bar=False)
        assert sorted(ids) == sorted(ds["roles"]["unlabeled"])
        run_cmd([os.path.join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", "0", "-tr", TRAINER, "-device", "cpu"],
                env=_budget_env(1, iterations=2))
        fold = os.path.join(results, "fold_0")
        ckpt = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
        assert np.isfinite(ckpt["logging"]["train_unsup"][0])
        text = open(os.path.join(fold, sorted(f for f in os.listdir(fold) if f.startswith("training_log"))[-1])).read()
        assert f"Unlabeled pool: {len(ds['roles']['unlabeled'])} cases" in text
    finally:
        # leave the shared fixture as other test modules expect it
        shutil.rmtree(unlabeled_folder, ignore_errors=True)
        shutil.rmtree(results, ignore_errors=True)
        splits = os.path.join(pre, "splits_final.json")
        if os.path.isfile(splits):
            os.remove(splits)
