"""nnU-Net's whole workflow with the semi-supervised trainers, every step through the stock console command:
nnUNetv2_train D 2d F --npz (plain nnU-Net and Mean Teacher) -> nnUNetv2_find_best_configuration ->
nnUNetv2_predict -f ... (student; the Mean Teacher also with -chk checkpoint_final_teacher.pth) ->
nnUNetv2_ensemble -> nnUNetv2_apply_postprocessing; and the bad inputs of that workflow (a checkpoint a trainer never
writes, a fold without --npz probabilities, prediction folders without probabilities), with what nnU-Net says and
what ``nnUNetv2_mona_check_folds`` says.

The split is nnU-Net's own default 5-fold split of the labeled cases (imagesTr), made by the first training; folds 0
and 1 of it are trained and passed on with ``-f 0 1`` (every fold trains the same way: two show the shared pool, the
cross-validation over folds and the fold ensembles at two fifths of the trainings). The
unlabeled images are shared across all folds: they lie in imagesUnlabeled/, are preprocessed once into the sibling
folder nnUNetPlans_2d_unlabeled (never into the labeled folder, so the split never sees them), and every fold's
trainer reads that whole folder as its unlabeled pool; each Mean Teacher fold's training log shows the pool size.

Budget: 1 epoch x 2 iterations, 1 validation iteration, no augmentation workers (tiny: the test checks the workflow,
not the models' quality).
"""
import filecmp
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import _plan_and_preprocess, run_cmd
from nnunet_mona.demo.synthetic_dataset import LABELS, write_synthetic_dataset

FIVE_FOLD_ID = 980  # unique among the tests: they share one nnUNet_raw per test run
NAME = f"Dataset{FIVE_FOLD_ID}_MonaFiveFold"
BIN = os.path.dirname(sys.executable)
PLAIN, MEAN_TEACHER = "nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher"
TRAINERS = (PLAIN, MEAN_TEACHER)
FOLDS = ("0", "1")  # of the 5-fold split; -f for every command that takes folds
TEACHER = "checkpoint_final_teacher.pth"
BUDGET = {"nnUNet_mona_epochs": "1", "nnUNet_mona_iterations": "2", "nnUNet_mona_val_iterations": "1",
          "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1",
          "nnUNet_mona_skip_validation": "0"}  # the validation probabilities are what find_best_configuration reads


def _env(**extra):
    env = os.environ.copy()
    env.update(BUDGET)
    env.update(extra)
    return env


def _cmd(name):
    return os.path.join(BIN, name)


def _run_failing(cmd, env=None):
    """Run a command that must fail; returns its stdout+stderr."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                          env=env if env is not None else _env())
    assert proc.returncode != 0, f"expected a failure: {' '.join(cmd)}\n{proc.stdout[-3000:]}"
    return proc.stdout


def _model_folder(results, trainer):
    return os.path.join(results, NAME, f"{trainer}__nnUNetPlans__2d")


def _predict(ds, out, trainer, *extra):
    run_cmd([_cmd("nnUNetv2_predict"), "-i", os.path.join(ds["raw"], NAME, "imagesTs"), "-o", out,
             "-d", str(FIVE_FOLD_ID), "-c", "2d", "-tr", trainer, "-f", *FOLDS, "-device", "cpu",
             "-npp", "1", "-nps", "1", "--disable_progress_bar", *extra], env=_env())


@pytest.fixture(scope="module")
def five_folds(nnunet_dirs):
    """Dataset980 (3 labeled patients = 6 cases in imagesTr, 2 unlabeled patients = 4 cases in imagesUnlabeled, 1
    test patient = 2 cases in imagesTs), planned, preprocessed, its unlabeled images preprocessed; both trainers
    trained on folds 0-4 with --npz; nnUNetv2_find_best_configuration over them."""
    roles = write_synthetic_dataset(nnunet_dirs["raw"], dataset_id=FIVE_FOLD_ID, dataset_name="MonaFiveFold",
                                    n_labeled_patients=3, n_unlabeled_patients=2, n_test_patients=1,
                                    size=(64, 64), n_slices=2, seed=4)
    _plan_and_preprocess(FIVE_FOLD_ID)
    run_cmd([_cmd("nnUNetv2_mona_preprocess_unlabeled"), "-d", str(FIVE_FOLD_ID), "-c", "2d", "-np", "1",
             "--no_pbar"], env=_env())
    for trainer in TRAINERS:
        for fold in FOLDS:
            run_cmd([_cmd("nnUNetv2_train"), str(FIVE_FOLD_ID), "2d", fold, "-tr", trainer, "--npz", "-device", "cpu"],
                    env=_env())
    best = run_cmd([_cmd("nnUNetv2_find_best_configuration"), str(FIVE_FOLD_ID), "-c", "2d", "-tr", *TRAINERS,
                    "-f", *FOLDS, "-np", "1"], env=_env())
    return {"roles": roles, "find_best_output": best, **nnunet_dirs}


@pytest.fixture(scope="module")
def predictions(five_folds, tmp_path_factory):
    """The test images predicted with the trained folds of each trainer (--save_probabilities, for the ensemble), with
    the Mean Teacher's teacher (no probabilities), the two trainers ensembled, and the winner of find_best_configuration
    post-processed with its postprocessing.pkl."""
    ds, out = five_folds, tmp_path_factory.mktemp("five_fold_predictions")
    folders = {name: str(out / name) for name in (PLAIN, MEAN_TEACHER, "teacher", "ensemble", "postprocessed")}
    for trainer in TRAINERS:
        _predict(ds, folders[trainer], trainer, "--save_probabilities")
    _predict(ds, folders["teacher"], MEAN_TEACHER, "-chk", TEACHER)
    run_cmd([_cmd("nnUNetv2_ensemble"), "-i", folders[PLAIN], folders[MEAN_TEACHER], "-o", folders["ensemble"],
             "-np", "1"], env=_env())
    info = json.load(open(os.path.join(ds["results"], NAME, "inference_information.json")))
    best = info["best_model_or_ensemble"]
    chosen = [m["trainer"] for m in best["selected_model_or_models"]]
    # what inference_instructions.txt says: the ensemble's output if an ensemble won, else the winner's prediction
    winner_output = folders["ensemble"] if len(chosen) > 1 else folders[chosen[0]]
    run_cmd([_cmd("nnUNetv2_apply_postprocessing"), "-i", winner_output, "-o", folders["postprocessed"],
             "-pp_pkl_file", best["postprocessing_file"], "-plans_json", best["some_plans_file"], "-np", "1"],
            env=_env())
    return {"folders": folders, "chosen": chosen, "info": info}


def _assert_segmentations(folder, ds):
    """One segmentation per test case, each of its input image's size, spacing and origin, labels of the dataset."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".nii.gz"))
    assert files == sorted(f"{c}.nii.gz" for c in ds["roles"]["test"]), (folder, files)
    for f in files:
        seg = sitk.ReadImage(os.path.join(folder, f))
        image = sitk.ReadImage(os.path.join(ds["raw"], NAME, "imagesTs", f.replace(".nii.gz", "_0000.nii.gz")))
        assert seg.GetSize() == image.GetSize(), (folder, f)
        assert np.allclose(seg.GetSpacing(), image.GetSpacing()) and np.allclose(seg.GetOrigin(), image.GetOrigin())
        values = set(np.unique(sitk.GetArrayFromImage(seg)).tolist())
        assert values <= set(LABELS.values()), (folder, f, values)


def test_five_folds_share_the_unlabeled_pool(five_folds):
    """nnU-Net's default split divides the labeled cases into 5 disjoint validation sets; every fold of both trainers
    finished with its validation probabilities, and every Mean Teacher fold trained on all unlabeled images."""
    ds = five_folds
    labeled, unlabeled = ds["roles"]["labeled"], ds["roles"]["unlabeled"]
    splits = json.load(open(os.path.join(ds["preprocessed"], NAME, "splits_final.json")))
    assert len(splits) == 5 and all("unlabeled" not in s for s in splits)  # nnU-Net's own split
    assert sorted(c for s in splits for c in s["val"]) == sorted(labeled)
    assert not set(unlabeled) & {c for s in splits for c in s["train"] + s["val"]}
    for trainer in TRAINERS:
        for fold in FOLDS:
            fold_dir = os.path.join(_model_folder(ds["results"], trainer), f"fold_{fold}")
            assert os.path.isfile(os.path.join(fold_dir, "checkpoint_final.pth")), fold_dir
            val = splits[int(fold)]["val"]
            validation = os.path.join(fold_dir, "validation")
            assert sorted(f for f in os.listdir(validation) if f.endswith(".npz")) == sorted(f"{c}.npz" for c in val)
            assert os.path.isfile(os.path.join(fold_dir, TEACHER)) == (trainer == MEAN_TEACHER), fold_dir
            if trainer == MEAN_TEACHER:
                log = sorted(f for f in os.listdir(fold_dir) if f.startswith("training_log"))[-1]
                assert f"Unlabeled pool: {len(unlabeled)} cases" in open(os.path.join(fold_dir, log)).read(), fold_dir


def test_find_best_configuration_outputs(five_folds):
    ds = five_folds
    root = os.path.join(ds["results"], NAME)
    info = json.load(open(os.path.join(root, "inference_information.json")))
    best = info["best_model_or_ensemble"]
    chosen = best["selected_model_or_models"]
    assert 1 <= len(chosen) <= 2 and all(m["trainer"] in TRAINERS and m["configuration"] == "2d" for m in chosen)
    instructions = open(os.path.join(root, "inference_instructions.txt")).read()
    for m in chosen:
        assert f"-tr {m['trainer']} -c 2d" in instructions and f"-f  {' '.join(FOLDS)}" in instructions, instructions
    assert ("nnUNetv2_ensemble" in instructions) == (len(chosen) == 2)
    assert "nnUNetv2_apply_postprocessing" in instructions and best["postprocessing_file"] in instructions
    with open(best["postprocessing_file"], "rb") as f:
        pp_functions, pp_kwargs = pickle.load(f)
    assert len(pp_functions) == len(pp_kwargs)
    # both trainers were cross-validated and ensembled on the trained folds
    for trainer in TRAINERS:
        crossval = f"crossval_results_folds_{'_'.join(FOLDS)}"
        assert os.path.isfile(os.path.join(_model_folder(ds["results"], trainer), crossval, "summary.json"))
    ensembles = os.listdir(os.path.join(root, "ensembles"))
    assert len(ensembles) == 1 and all(t in ensembles[0] for t in TRAINERS), ensembles
    assert set(info["all_results"]) == {os.path.basename(_model_folder(root, t)) for t in TRAINERS} | set(ensembles)


def test_predict_ensemble_and_postprocess(five_folds, predictions):
    """Every prediction folder (both students, the teacher, the ensemble, the post-processed winner) holds one
    segmentation per test image, of the image's geometry, with the dataset's labels."""
    for name, folder in predictions["folders"].items():
        _assert_segmentations(folder, five_folds)
    for trainer in TRAINERS:  # --save_probabilities: what nnUNetv2_ensemble averaged
        assert sorted(f for f in os.listdir(predictions["folders"][trainer]) if f.endswith(".npz")) == \
            sorted(f"{c}.npz" for c in five_folds["roles"]["test"])


def test_check_folds_passes_on_the_trained_folds(five_folds, predictions):
    """nnUNetv2_mona_check_folds finds nothing missing where the workflow above ran."""
    out = run_cmd([_cmd("nnUNetv2_mona_check_folds"), "-d", str(FIVE_FOLD_ID), "-c", "2d", "-tr", *TRAINERS,
                   "-f", *FOLDS, "--npz", "--predictions", predictions["folders"][PLAIN],
                   predictions["folders"][MEAN_TEACHER]], env=_env())
    assert f"OK: folds {' '.join(FOLDS)} of nnUNetTrainerBudget, nnUNetTrainerMeanTeacher" in out, out
    out = run_cmd([_cmd("nnUNetv2_mona_check_folds"), "-d", str(FIVE_FOLD_ID), "-tr", MEAN_TEACHER, "-f", *FOLDS,
                   "-chk", TEACHER], env=_env())
    assert "OK:" in out, out


def test_teacher_checkpoint_of_a_trainer_without_teacher(five_folds, predictions, tmp_path):
    """``-chk checkpoint_final_teacher.pth`` for plain nnU-Net: nnUNetv2_predict stops before any trainer class is
    imported, naming the missing file of fold 0 (the path), and leaves the output folder as it was;
    nnUNetv2_mona_check_folds names every fold and says to predict with checkpoint_final.pth."""
    out_folder = tmp_path / "earlier_predictions"
    shutil.copytree(predictions["folders"][PLAIN], out_folder)
    before = sorted(os.listdir(out_folder))
    message = _run_failing([_cmd("nnUNetv2_predict"), "-i", os.path.join(five_folds["raw"], NAME, "imagesTs"),
                            "-o", str(out_folder), "-d", str(FIVE_FOLD_ID), "-c", "2d", "-tr", PLAIN, "-f", *FOLDS,
                            "-chk", TEACHER, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"])
    assert "FileNotFoundError" in message and os.path.join(f"{PLAIN}__nnUNetPlans__2d", "fold_0", TEACHER) in message
    assert sorted(os.listdir(out_folder)) == before
    assert all(filecmp.cmp(os.path.join(out_folder, f), os.path.join(predictions["folders"][PLAIN], f), shallow=False)
               for f in before)
    report = _run_failing([_cmd("nnUNetv2_mona_check_folds"), "-d", str(FIVE_FOLD_ID), "-tr", PLAIN, "-f", *FOLDS,
                           "-chk", TEACHER])
    for fold in FOLDS:
        assert f"fold {fold} of {PLAIN}" in report, report
    assert "writes no teacher checkpoint" in report and "checkpoint_final.pth (leave out -chk)" in report


def test_fold_without_npz(five_folds, tmp_path):
    """A fold validated without --npz: find_best_configuration's ensembling stops on that fold's folder and says
    '--val --npz', overwriting none of the earlier results; nnUNetv2_mona_check_folds names the fold and the exact
    command, and that command (our trainer's --val) makes the fold complete."""
    results = tmp_path / "results"
    shutil.copytree(os.path.join(five_folds["results"], NAME), results / NAME)
    env = _env(nnUNet_results=str(results))
    validation = _model_folder(str(results), MEAN_TEACHER) + "/fold_1/validation"
    for f in os.listdir(validation):
        if f.endswith(".npz"):
            os.remove(os.path.join(validation, f))
    kept = {f: open(results / NAME / f, "rb").read() for f in ("inference_instructions.txt",
                                                                 "inference_information.json")}
    ensembles = {f: os.path.getmtime(os.path.join(dp, f)) for dp, _, fs in os.walk(results / NAME / "ensembles")
                 for f in fs}
    message = _run_failing([_cmd("nnUNetv2_find_best_configuration"), str(FIVE_FOLD_ID), "-c", "2d",
                            "-tr", *TRAINERS, "-f", *FOLDS, "-np", "1"], env=env)
    assert f"No .npz files found in folder {validation}" in message and "--val --npz" in message, message[-2000:]
    assert {f: open(results / NAME / f, "rb").read() for f in kept} == kept
    assert {f: os.path.getmtime(os.path.join(dp, f)) for dp, _, fs in os.walk(results / NAME / "ensembles")
            for f in fs} == ensembles
    report = _run_failing([_cmd("nnUNetv2_mona_check_folds"), "-d", str(FIVE_FOLD_ID), "-c", "2d",
                           "-tr", *TRAINERS, "-f", *FOLDS, "--npz"], env=env)
    remedy = f"nnUNetv2_train {FIVE_FOLD_ID} 2d 1 -tr {MEAN_TEACHER} --val --npz"
    assert f"fold 1 of {MEAN_TEACHER}" in report and remedy in report and report.count("MISSING") == 1, report
    run_cmd([_cmd(remedy.split()[0]), *remedy.split()[1:], "-device", "cpu"], env=env)
    assert "OK:" in run_cmd([_cmd("nnUNetv2_mona_check_folds"), "-d", str(FIVE_FOLD_ID), "-tr", *TRAINERS,
                             "-f", *FOLDS, "--npz"], env=env)


def test_ensemble_of_predictions_without_probabilities(predictions, tmp_path):
    """nnUNetv2_ensemble with a folder predicted without --save_probabilities (the teacher's) fails on 'Not all
    folders contain the same files'; with no probabilities at all it writes no segmentation and exits 0.
    nnUNetv2_mona_check_folds --predictions names the folders and --save_probabilities."""
    folders = predictions["folders"]
    message = _run_failing([_cmd("nnUNetv2_ensemble"), "-i", folders[MEAN_TEACHER], folders["teacher"],
                            "-o", str(tmp_path / "mixed"), "-np", "1"])
    assert "Not all folders contain the same files" in message, message[-2000:]
    second = tmp_path / "teacher_copy"
    shutil.copytree(folders["teacher"], second)
    run_cmd([_cmd("nnUNetv2_ensemble"), "-i", folders["teacher"], str(second), "-o", str(tmp_path / "none"),
             "-np", "1"], env=_env())
    assert not [f for f in os.listdir(tmp_path / "none") if f.endswith(".nii.gz")]  # silently nothing
    report = _run_failing([_cmd("nnUNetv2_mona_check_folds"), "--predictions", folders[MEAN_TEACHER],
                           folders["teacher"], str(second)])
    assert report.count("MISSING") == 2 and f"{folders['teacher']}: no .npz" in report, report
    assert f"{second}: no .npz" in report and "--save_probabilities" in report


# ---- nnUNetv2_mona_check_folds on hand-made fold folders (no training): every kind of gap and its command


def _fake_model(tmp_path, folds):
    """A model folder whose folds hold the files named in ``folds`` ({fold: [relative paths]})."""
    model = tmp_path / "nnUNetTrainerMeanTeacher__nnUNetPlans__2d"
    model.mkdir()
    (model / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    for fold, files in folds.items():
        for name in files:
            path = model / f"fold_{fold}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    return str(model)


COMPLETE = ["checkpoint_final.pth", TEACHER, "validation/a.nii.gz", "validation/a.npz"]


@pytest.mark.parametrize("files, trainer, checkpoint, expected", [
    ([], MEAN_TEACHER, "checkpoint_final.pth", "not trained (no checkpoint_final.pth); train it with "
                                               "`nnUNetv2_train 7 2d 1 -tr nnUNetTrainerMeanTeacher --npz`"),
    (["checkpoint_latest.pth"], MEAN_TEACHER, "checkpoint_final.pth",
     "training did not finish (no checkpoint_final.pth, a checkpoint_latest.pth); continue it with "
     "`nnUNetv2_train 7 2d 1 -tr nnUNetTrainerMeanTeacher --c --npz`"),
    (["checkpoint_final.pth"], MEAN_TEACHER, "checkpoint_final.pth",
     "no final validation (validation/; e.g. trained with nnUNet_mona_skip_validation=1); run it with "
     "`nnUNetv2_train 7 2d 1 -tr nnUNetTrainerMeanTeacher --val --npz`"),
    (["checkpoint_final.pth", "validation/a.nii.gz", "validation/b.nii.gz", "validation/b.npz"], MEAN_TEACHER,
     "checkpoint_final.pth", "validation/ has no .npz probabilities for 1 case(s) (['a']) (validated without --npz)"),
    (["checkpoint_final.pth", "validation/b.nii.gz", "validation/b.npz"], MEAN_TEACHER, "checkpoint_final.pth",
     "validation/ lacks 1 of the split's validation cases (['a']); run it again with "
     "`nnUNetv2_train 7 2d 1 -tr nnUNetTrainerMeanTeacher --val --npz`"),
    (["checkpoint_final.pth", "validation/a.nii.gz", "validation/a.npz"], PLAIN, TEACHER,
     "nnUNetTrainerBudget writes no teacher checkpoint"),
    (["checkpoint_final.pth", "validation/a.nii.gz", "validation/a.npz"], MEAN_TEACHER, TEACHER,
     "write it with `nnUNetv2_train 7 2d 1 -tr nnUNetTrainerMeanTeacher --c`"),
])
def test_check_folds_names_the_gap_and_its_command(tmp_path, files, trainer, checkpoint, expected):
    from nnunet_mona.cli.check_folds import fold_problems

    model = _fake_model(tmp_path, {0: COMPLETE, 1: files})
    problems = fold_problems(model, "7", "2d", trainer, folds=(0, 1), checkpoint=checkpoint, npz=True,
                             val_cases={0: ["a"], 1: ["a"]})
    assert len(problems) == 1 and problems[0].startswith(f"fold 1 of {trainer}") and expected in problems[0], problems
    assert fold_problems(model, "7", "2d", trainer, folds=(0,), checkpoint=checkpoint, npz=True,
                         val_cases={0: ["a"]}) == []
