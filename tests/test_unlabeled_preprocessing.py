"""nnUNetv2_mona_preprocess_unlabeled: output content, equivalence with nnU-Net's own preprocessing, resume,
staleness, and input errors raised before anything is written.

All tests work on copies of the Dataset990 fixture (ids 992-994), never on Dataset990 itself.
"""
import json
import os
import shutil
import sys

import blosc2
import numpy as np
import pytest
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, comp_blosc2_params

from conftest import run_cmd
from nnunet_mona.data.paths import UNLABELED_MANIFEST, unlabeled_preprocessed_folder
from nnunet_mona.data.unlabeled_preprocessing import (StaleUnlabeledDataError, UnlabeledDataError,
                                                      check_unlabeled_folder_is_current, entry_point,
                                                      preprocess_unlabeled)

CLI_ID, INPROC_ID, BAD_ID = 992, 993, 994
LABELED = "nnUNetPlans_2d"
UNLABELED = "nnUNetPlans_2d_unlabeled"


def _copy_dataset(src: dict, new_id: int, with_preprocessed: bool = True) -> dict:
    """Copy raw + planned/preprocessed Dataset990 to Dataset<new_id>_Copy (without any unlabeled output)."""
    name = f"Dataset{new_id:03d}_Copy"
    raw, pre = os.path.join(src["raw"], name), os.path.join(src["preprocessed"], name)
    for d in (raw, pre):
        shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(os.path.join(src["raw"], src["name"]), raw)
    if with_preprocessed:
        shutil.copytree(os.path.join(src["preprocessed"], src["name"]), pre,
                        ignore=shutil.ignore_patterns("*_unlabeled", "splits_final.json", "gt_segmentations"))
    return {"id": new_id, "name": name, "raw": raw, "pre": pre, "labeled": os.path.join(pre, LABELED),
            "unlabeled": os.path.join(pre, UNLABELED), "images": os.path.join(raw, "imagesUnlabeled")}


def _listing(folder: str) -> dict:
    return {f: (os.path.getsize(os.path.join(folder, f)), os.path.getmtime(os.path.join(folder, f)))
            for f in sorted(os.listdir(folder))}


def _raw_ids(folder: str) -> list:
    return sorted({f[:-len("_0000.nii.gz")] for f in os.listdir(folder)})


@pytest.fixture(scope="module")
def cli_copy(real_unlabeled_dataset):
    """Dataset992: copy of Dataset990, unlabeled images preprocessed by the console command (spawn pool)."""
    ds = _copy_dataset(real_unlabeled_dataset, CLI_ID)
    ds["labeled_before"] = _listing(ds["labeled"])
    ds["pre_entries_before"] = sorted(os.listdir(ds["pre"]))
    exe = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_mona_preprocess_unlabeled")
    ds["stdout"] = run_cmd([exe, "-d", str(CLI_ID), "-c", "2d", "-np", "1", "--no_pbar"], timeout=300)
    ds["roles"] = real_unlabeled_dataset["roles"]
    return ds


@pytest.fixture(scope="module")
def inproc_copy(real_unlabeled_dataset):
    """Dataset993: copy of Dataset990 whose imagesUnlabeled also holds two LABELED images under new ids
    (``unl_<id>``), preprocessed in-process; lets us compare with nnU-Net's preprocessing of the same image."""
    ds = _copy_dataset(real_unlabeled_dataset, INPROC_ID)
    ds["twins"] = {}
    for cid in real_unlabeled_dataset["roles"]["labeled"][:2]:
        shutil.copy(os.path.join(ds["raw"], "imagesTr", f"{cid}_0000.nii.gz"),
                    os.path.join(ds["images"], f"unl_{cid}_0000.nii.gz"))
        ds["twins"][f"unl_{cid}"] = cid
    ds["labeled_before"] = _listing(ds["labeled"])
    ds["returned"] = preprocess_unlabeled(INPROC_ID, "2d", "nnUNetPlans", num_processes=0, show_progress_bar=False)
    return ds


# ---------------------------------------------------------------- output of the console command

def test_cli_writes_exactly_the_unlabeled_cases(cli_copy):
    expected = sorted(cli_copy["roles"]["unlabeled"])
    assert _raw_ids(cli_copy["images"]) == expected and len(expected) == 8
    files = set(os.listdir(cli_copy["unlabeled"]))
    assert files == {f"{c}{s}" for c in expected for s in (".b2nd", "_seg.b2nd", ".pkl")} | {UNLABELED_MANIFEST}
    assert sorted(nnUNetDatasetBlosc2.get_identifiers(cli_copy["unlabeled"])) == expected
    # labeled folder untouched (same files, sizes, mtimes), and the only new entry is the unlabeled folder
    assert _listing(cli_copy["labeled"]) == cli_copy["labeled_before"]
    assert sorted(os.listdir(cli_copy["pre"])) == sorted(cli_copy["pre_entries_before"] + [UNLABELED])
    assert "8 to preprocess" in cli_copy["stdout"]


def test_cli_manifest_records_plans(cli_copy):
    with open(os.path.join(cli_copy["unlabeled"], UNLABELED_MANIFEST)) as f:
        m = json.load(f)
    assert m["plans_identifier"] == "nnUNetPlans" and m["configuration"] == "2d"
    assert m["data_identifier"] == LABELED and m["file_ending"] == ".nii.gz" and m["num_channels"] == 1
    assert m["complete"] is True and m["case_ids"] == sorted(cli_copy["roles"]["unlabeled"])
    assert len(m["plans_hash"]) == 64
    check_unlabeled_folder_is_current(cli_copy["pre"], "nnUNetPlans", "2d", os.path.join(cli_copy["pre"],
                                                                                        "nnUNetPlans.json"))


def test_saved_cases_look_like_nnunet_cases(cli_copy):
    with open(os.path.join(cli_copy["pre"], "nnUNetPlans.json")) as f:
        patch_size = tuple(json.load(f)["configurations"]["2d"]["patch_size"])
    dataset = nnUNetDatasetBlosc2(cli_copy["unlabeled"])
    for cid in dataset.identifiers:
        data, seg, seg_prev, props = dataset.load_case(cid)
        assert data.dtype == np.float32 and data.ndim == 4 and data.shape[0] == 1
        assert seg.dtype == np.int16 and seg.shape == (1, *data.shape[1:])
        assert set(np.unique(seg[:])) <= {0, -1}
        assert props["class_locations"] == {} and props["is_unlabeled"] is True
        # MRI -> z-score over the image: the stored array is normalised
        arr = np.asarray(data[:])
        assert abs(arr.mean()) < 1e-3 and abs(arr.std() - 1) < 1e-2
        # same Blosc2 chunking as nnU-Net's run_case_save
        blocks, chunks = comp_blosc2_params(data.shape, patch_size, 4)
        stored = blosc2.open(os.path.join(cli_copy["unlabeled"], cid + ".b2nd"), mode="r")
        assert tuple(stored.chunks) == tuple(chunks) and tuple(stored.blocks) == tuple(blocks)


# ---------------------------------------------------------------- equivalence with nnU-Net's preprocessing

def test_same_arrays_as_nnunet_for_the_same_image(inproc_copy):
    assert set(inproc_copy["twins"]) <= set(inproc_copy["returned"])
    unl = nnUNetDatasetBlosc2(inproc_copy["unlabeled"])
    lab = nnUNetDatasetBlosc2(inproc_copy["labeled"])
    for twin, original in inproc_copy["twins"].items():
        d_u, s_u, _, p_u = unl.load_case(twin)
        d_l, s_l, _, p_l = lab.load_case(original)
        assert d_u.shape == d_l.shape
        np.testing.assert_array_equal(np.asarray(d_u[:]), np.asarray(d_l[:]))
        np.testing.assert_array_equal(np.asarray(s_u[:]) == -1, np.asarray(s_l[:]) == -1)
        for k in ("spacing", "shape_before_cropping", "bbox_used_for_cropping",
                  "shape_after_cropping_and_before_resampling"):
            assert np.array_equal(np.asarray(p_u[k]), np.asarray(p_l[k])), k
        assert p_l["class_locations"] and p_u["class_locations"] == {}
    assert _listing(inproc_copy["labeled"]) == inproc_copy["labeled_before"]


# ---------------------------------------------------------------- resume, overwrite, staleness (mutates 993)

def test_rerun_skips_done_cases_and_resumes(inproc_copy):
    folder = inproc_copy["unlabeled"]
    before = _listing(folder)
    assert preprocess_unlabeled(INPROC_ID, num_processes=0, show_progress_bar=False) == inproc_copy["returned"]
    after = _listing(folder)
    assert {k: v for k, v in after.items() if k != UNLABELED_MANIFEST} == \
           {k: v for k, v in before.items() if k != UNLABELED_MANIFEST}
    victim = inproc_copy["returned"][0]
    os.remove(os.path.join(folder, victim + ".pkl"))  # as if interrupted while saving this case
    preprocess_unlabeled(INPROC_ID, num_processes=0, show_progress_bar=False)
    again = _listing(folder)
    changed = {k for k in again if k != UNLABELED_MANIFEST and again[k][1] != before[k][1]}
    assert changed <= {victim + ".b2nd", victim + "_seg.b2nd", victim + ".pkl"} and victim + ".pkl" in changed
    check_unlabeled_folder_is_current(inproc_copy["pre"], "nnUNetPlans", "2d",
                                      os.path.join(inproc_copy["pre"], "nnUNetPlans.json"))


def test_staleness_after_replan(inproc_copy):
    plans_file = os.path.join(inproc_copy["pre"], "nnUNetPlans.json")
    with open(plans_file) as f:
        plans = json.load(f)
    check_unlabeled_folder_is_current(inproc_copy["pre"], "nnUNetPlans", "2d", plans)
    fix = f"nnUNetv2_mona_preprocess_unlabeled -d {INPROC_ID} -c 2d -p nnUNetPlans --overwrite"
    changed_stats = json.loads(json.dumps(plans))
    changed_stats["foreground_intensity_properties_per_channel"]["0"]["mean"] += 1.0
    changed_patch = json.loads(json.dumps(plans))
    changed_patch["configurations"]["2d"]["patch_size"] = [32, 32]
    for bad in (changed_stats, changed_patch):
        with pytest.raises(StaleUnlabeledDataError, match="stale") as e:
            check_unlabeled_folder_is_current(inproc_copy["pre"], "nnUNetPlans", "2d", bad)
        assert fix in str(e.value)
    # a re-plan on disk: a plain run refuses (nothing touched), --overwrite rebuilds
    before = _listing(inproc_copy["unlabeled"])
    with open(plans_file, "w") as f:
        json.dump(changed_stats, f)
    with pytest.raises(UnlabeledDataError, match="other plans"):
        preprocess_unlabeled(INPROC_ID, num_processes=0, show_progress_bar=False)
    assert _listing(inproc_copy["unlabeled"]) == before
    ids = preprocess_unlabeled(INPROC_ID, num_processes=0, overwrite=True, show_progress_bar=False)
    assert ids == inproc_copy["returned"]
    check_unlabeled_folder_is_current(inproc_copy["pre"], "nnUNetPlans", "2d", changed_stats)
    with pytest.raises(StaleUnlabeledDataError):
        check_unlabeled_folder_is_current(inproc_copy["pre"], "nnUNetPlans", "2d", plans)
    # missing manifest: the check says how to fix it, a plain run refuses to guess
    os.remove(os.path.join(inproc_copy["unlabeled"], UNLABELED_MANIFEST))
    with pytest.raises(StaleUnlabeledDataError, match=UNLABELED_MANIFEST) as e:
        check_unlabeled_folder_is_current(inproc_copy["pre"], "nnUNetPlans", "2d", changed_stats)
    assert fix in str(e.value)
    with pytest.raises(UnlabeledDataError, match="no " + UNLABELED_MANIFEST):
        preprocess_unlabeled(INPROC_ID, num_processes=0, show_progress_bar=False)


# ---------------------------------------------------------------- input errors before anything is written

def _first(images):
    return os.path.join(images, sorted(os.listdir(images))[0])


def _mutations():
    def no_folder(ds):
        shutil.rmtree(ds["images"])

    def empty(ds):
        for f in os.listdir(ds["images"]):
            os.remove(os.path.join(ds["images"], f))

    def wrong_ending(ds):
        p = _first(ds["images"])
        os.rename(p, p[:-3])  # .nii.gz -> .nii

    def missing_channel(ds):
        p = _first(ds["images"])
        os.rename(p, p.replace("_0000.", "_0001."))

    def extra_channel(ds):
        p = _first(ds["images"])
        shutil.copy(p, p.replace("_0000.", "_0001."))

    def collision(ds):
        tr = os.path.join(ds["raw"], "imagesTr")
        shutil.copy(os.path.join(tr, sorted(os.listdir(tr))[0]), ds["images"])

    def unreadable(ds):
        with open(_first(ds["images"]), "wb") as f:
            f.write(b"this is not a nifti file" * 10)

    def not_planned(ds):
        shutil.rmtree(ds["pre"])

    return [(no_folder, "not found"), (empty, "No unlabeled images"), (wrong_ending, "file ending"),
            (missing_channel, "missing channel"), (extra_channel, "unexpected channel"),
            (collision, "also labeled training cases"), (unreadable, "Cannot read image file .*_0000.nii.gz"),
            (not_planned, "nnUNetv2_plan_and_preprocess")]


@pytest.mark.parametrize("mutate,message", _mutations(), ids=lambda x: getattr(x, "__name__", ""))
def test_bad_input_fails_before_writing(real_unlabeled_dataset, mutate, message):
    ds = _copy_dataset(real_unlabeled_dataset, BAD_ID)
    labeled_before = _listing(ds["labeled"])
    mutate(ds)
    with pytest.raises(UnlabeledDataError, match=message):
        preprocess_unlabeled(BAD_ID, num_processes=0, show_progress_bar=False)
    assert not os.path.exists(ds["unlabeled"])
    if os.path.isdir(ds["labeled"]):
        assert _listing(ds["labeled"]) == labeled_before


def test_unknown_configuration_and_cli_error_exit(real_unlabeled_dataset, capsys):
    ds = _copy_dataset(real_unlabeled_dataset, BAD_ID)
    with pytest.raises(UnlabeledDataError, match="3d_fullres"):
        preprocess_unlabeled(BAD_ID, configuration="3d_fullres", num_processes=0)
    with pytest.raises(UnlabeledDataError, match="'nonsense' is not in"):
        preprocess_unlabeled(BAD_ID, configuration="nonsense", num_processes=0)
    with pytest.raises(SystemExit) as e:
        entry_point(["-d", str(BAD_ID), "-i", "doesNotExist", "-np", "0"])
    assert e.value.code == 1 and "doesNotExist" in capsys.readouterr().err
    assert not os.path.exists(ds["unlabeled"])
    assert not os.path.exists(unlabeled_preprocessed_folder(ds["pre"], "nnUNetPlans_3d_fullres"))
