"""nnUNetv2_mona_make_splits: patient grouping, fold properties, determinism, explicit lists, errors, files.

Pure functions are tested on made-up case names; the console command runs once on a raw-only synthetic
dataset (Dataset995, written here, never planned) so that no fixture dataset gets a splits_final.json.
"""
import json
import os
import random
import shutil
import subprocess
import sys

import pytest

from conftest import run_cmd
from nnunet_mona.data._splits_case_ids import get_training_case_ids
from nnunet_mona.data.splits import (DEFAULT_PATIENT_REGEX, SplitsError, group_cases_by_patient, load_unlabeled_ids,
                                     make_explicit_split, make_semi_supervised_splits, validate_splits, write_splits)
from nnunet_mona.demo.synthetic_dataset import write_synthetic_dataset

SPLITS_ID = 995
ACDC = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 11) for f in (1, 12)]


def _patient(case):
    return case.split("_frame")[0]


def _check_fold_invariants(fold, all_cases, groups, n_labeled, n_val):
    train, val, unl = set(fold["train"]), set(fold["val"]), set(fold["unlabeled"])
    for k in ("train", "val", "unlabeled"):
        assert len(fold[k]) == len(set(fold[k])), f"duplicates in {k}"
    assert not train & unl and not val & unl
    if n_val == 0:
        assert fold["val"] == fold["train"]
        assert train | unl == set(all_cases)  # every case in exactly one of train/unlabeled
    else:
        assert not train & val and train | val | unl == set(all_cases)
    case_to_patient = {c: p for p, cs in groups.items() for c in cs}
    labeled_patients = {case_to_patient[c] for c in train}
    assert len(labeled_patients) == n_labeled
    if n_val:
        assert len({case_to_patient[c] for c in val}) == n_val
    for p, cs in groups.items():  # a patient is never split
        sides = {("train" if c in train else "val" if c in val else "unlabeled") for c in cs}
        assert len(sides) == 1, (p, sides)


# ---------------------------------------------------------------- grouping

def test_groups_acdc_style_names():
    cases = ["patient001_frame01", "patient001_frame12", "patient002_frame01", "odd_case", "patient010_frame04"]
    groups = group_cases_by_patient(cases)
    assert groups == {"odd_case": ["odd_case"], "patient001": ["patient001_frame01", "patient001_frame12"],
                      "patient002": ["patient002_frame01"], "patient010": ["patient010_frame04"]}
    # the alternation form (first participating group) gives the same result
    assert group_cases_by_patient(cases, r"^(.*?)_frame\d+$|^(.*)$") == groups
    # custom regex, re.search semantics: first group is the patient
    assert group_cases_by_patient(["a_p1_t0", "b_p1_t1", "c_p2_t0"], r"_(p\d+)_") == \
        {"p1": ["a_p1_t0", "b_p1_t1"], "p2": ["c_p2_t0"]}


def test_grouping_errors():
    with pytest.raises(SplitsError, match="no capturing group"):
        group_cases_by_patient(ACDC, r"patient\d+")
    with pytest.raises(SplitsError, match="Invalid"):
        group_cases_by_patient(ACDC, r"(patient")
    with pytest.raises(SplitsError, match="Duplicate case ids"):
        group_cases_by_patient(ACDC + ACDC[:1])


# ---------------------------------------------------------------- random folds

def test_acdc_folds_counts_and_invariants():
    splits = make_semi_supervised_splits(ACDC, 3, num_folds=5, seed=12345)
    groups = group_cases_by_patient(ACDC)
    assert len(splits) == 5
    for fold in splits:
        _check_fold_invariants(fold, ACDC, groups, 3, 0)
        assert len(fold["train"]) == 6 and len(fold["unlabeled"]) == 14
    with_val = make_semi_supervised_splits(ACDC, 2, num_folds=3, seed=1, num_val_patients=2)
    for fold in with_val:
        _check_fold_invariants(fold, ACDC, groups, 2, 2)
        assert (len(fold["train"]), len(fold["val"]), len(fold["unlabeled"])) == (4, 4, 12)


def test_seed_determinism_and_seed_sensitivity():
    a = make_semi_supervised_splits(ACDC, 2, 5, seed=7)
    shuffled = list(ACDC)
    random.Random(0).shuffle(shuffled)
    assert make_semi_supervised_splits(shuffled, 2, 5, seed=7) == a  # input order does not matter
    assert make_semi_supervised_splits(ACDC, 2, 5, seed=8) != a
    many = {json.dumps(make_semi_supervised_splits(ACDC, 2, 5, seed=s)) for s in range(10)}
    assert len(many) >= 8


def test_folds_use_different_patients():
    splits = make_semi_supervised_splits(ACDC, 2, num_folds=5, seed=3)
    labeled = [frozenset(_patient(c) for c in f["train"]) for f in splits]
    assert len(set(labeled)) == 5
    assert set().union(*labeled) == {_patient(c) for c in ACDC}  # 5 folds x 2 of 10 patients: all covered once
    # more folds than distinct sets: repeats only once every set is used
    tiny = ["x_frame01", "x_frame02", "y_frame01", "z_frame01"]
    sets = [frozenset(_patient(c) for c in f["train"]) for f in make_semi_supervised_splits(tiny, 2, 3, seed=0)]
    assert len(set(sets)) == 3


def test_random_names_fuzz():
    """Random case names (some not matching the regex), random N/val/folds: invariants always hold."""
    rng = random.Random(2024)
    for trial in range(60):
        n_patients = rng.randint(2, 15)
        cases = []
        for p in range(n_patients):
            name = "".join(rng.choice("abcxyz0123") for _ in range(rng.randint(1, 6))) + f"P{p}"
            if rng.random() < 0.2:
                cases.append(name)  # no frame suffix -> own patient
            else:
                cases += [f"{name}_frame{f:02d}" for f in rng.sample(range(1, 30), rng.randint(1, 3))]
        groups = group_cases_by_patient(cases)
        assert len(groups) == n_patients and sorted(c for cs in groups.values() for c in cs) == sorted(cases)
        n_val = rng.randint(0, min(2, n_patients - 1))
        n_lab = rng.randint(1, n_patients - n_val)
        folds = rng.randint(1, 5)
        seed = rng.randint(0, 10 ** 6)
        splits = make_semi_supervised_splits(cases, n_lab, folds, seed, num_val_patients=n_val)
        assert len(splits) == folds
        for fold in splits:
            _check_fold_invariants(fold, cases, groups, n_lab, n_val)
        validate_splits(splits)
        assert make_semi_supervised_splits(list(reversed(cases)), n_lab, folds, seed, num_val_patients=n_val) == splits


def test_random_fold_errors():
    with pytest.raises(SplitsError, match="only 10 patient"):
        make_semi_supervised_splits(ACDC, 11, 5, 0)
    with pytest.raises(SplitsError, match=">= 1"):
        make_semi_supervised_splits(ACDC, 0, 5, 0)
    with pytest.raises(SplitsError, match="9 labeled \\+ 2 validation"):
        make_semi_supervised_splits(ACDC, 9, 5, 0, num_val_patients=2)
    with pytest.raises(SplitsError, match="num_folds"):
        make_semi_supervised_splits(ACDC, 2, 0, 0)


# ---------------------------------------------------------------- explicit lists, unlabeled pool

def test_explicit_labeled_list():
    (fold,) = make_explicit_split(ACDC, ["patient003", "patient007_frame12"])
    assert fold["train"] == ["patient003_frame01", "patient003_frame12", "patient007_frame01", "patient007_frame12"]
    assert fold["val"] == fold["train"] and len(fold["unlabeled"]) == 16
    (fold,) = make_explicit_split(ACDC, ["patient001"], num_val_patients=1, seed=0)
    _check_fold_invariants(fold, ACDC, group_cases_by_patient(ACDC), 1, 1)
    with pytest.raises(SplitsError, match="Unknown .*patient999"):
        make_explicit_split(ACDC, ["patient001", "patient999"])
    with pytest.raises(SplitsError, match="Duplicate"):
        make_explicit_split(ACDC, ["patient001", "patient001"])
    with pytest.raises(SplitsError, match="Duplicate patients"):
        make_explicit_split(ACDC, ["patient001", "patient001_frame01"])
    with pytest.raises(SplitsError, match="empty"):
        make_explicit_split(ACDC, ["  "])


def test_restricted_unlabeled_pool():
    pool = ["patient009", "patient010_frame01"]
    splits = make_semi_supervised_splits(ACDC, 2, 4, seed=5, unlabeled_cases=pool)
    for f in splits:
        assert f["unlabeled"] == ["patient009_frame01", "patient009_frame12", "patient010_frame01",
                                  "patient010_frame12"]
        assert not {_patient(c) for c in f["train"]} & {"patient009", "patient010"}
    with pytest.raises(SplitsError, match="both labeled and unlabeled"):
        make_explicit_split(ACDC, ["patient009"], unlabeled_cases=pool)


# ---------------------------------------------------------------- files

def test_write_load_and_refuse_overwrite(tmp_path):
    splits = make_semi_supervised_splits(ACDC, 1, 2, seed=0)
    f = str(tmp_path / "splits_final.json")
    assert write_splits(splits, f) == f
    with open(f) as fh:
        assert json.load(fh) == splits
    with pytest.raises(FileExistsError, match="splits_final.json"):
        write_splits(make_semi_supervised_splits(ACDC, 1, 2, seed=1), f)
    with open(f) as fh:
        assert json.load(fh) == splits  # untouched
    assert load_unlabeled_ids(f, 1) == splits[1]["unlabeled"] and load_unlabeled_ids(f, "0") == splits[0]["unlabeled"]
    assert load_unlabeled_ids(f, "all") == []
    with pytest.raises(IndexError):
        load_unlabeled_ids(f, 2)
    plain = str(tmp_path / "nnunet_style.json")
    with open(plain, "w") as fh:
        json.dump([{"train": ["a"], "val": ["b"]}], fh)
    assert load_unlabeled_ids(plain, 0) == []
    bad = [{"train": ["a", "b"], "val": ["a"], "unlabeled": ["b"]}]
    with pytest.raises(SplitsError, match="both labeled"):
        write_splits(bad, str(tmp_path / "bad.json"))
    assert not os.path.exists(tmp_path / "bad.json")


# ---------------------------------------------------------------- command line (Dataset995, raw only)

@pytest.fixture()
def raw_only_dataset(nnunet_dirs):
    name = f"Dataset{SPLITS_ID}_MonaSplits"
    for root in (nnunet_dirs["raw"], nnunet_dirs["preprocessed"]):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    roles = write_synthetic_dataset(nnunet_dirs["raw"], dataset_id=SPLITS_ID, dataset_name="MonaSplits",
                                    n_labeled_patients=2, n_unlabeled_patients=4, n_test_patients=0, size=(16, 16),
                                    n_slices=1, unlabeled_as_training_cases=True, seed=3)
    return {"name": name, "cases": sorted(roles["labeled"] + roles["unlabeled"]),
            "pre": os.path.join(nnunet_dirs["preprocessed"], name)}


def test_command_line(raw_only_dataset, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "nnUNetv2_mona_make_splits")
    out = run_cmd([exe, "-d", str(SPLITS_ID), "--num_labeled", "2", "--num_folds", "3", "--seed", "7"], timeout=120)
    splits_file = os.path.join(raw_only_dataset["pre"], "splits_final.json")
    with open(splits_file) as f:
        splits = json.load(f)
    assert splits == make_semi_supervised_splits(raw_only_dataset["cases"], 2, 3, 7)
    assert "fold 2: 2 labeled patient(s) / 4 case(s)" in out and "8 unlabeled" in out
    # refuses to overwrite, names the file, leaves it alone
    proc = subprocess.run([exe, "-d", str(SPLITS_ID), "--num_labeled", "1"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 1 and splits_file in proc.stdout and "--overwrite" in proc.stdout
    with open(splits_file) as f:
        assert json.load(f) == splits
    # explicit file, one fold
    lst = tmp_path / "labeled.txt"
    lst.write_text("# labeled\nsynth001\n\nsynth004_frame02\n")
    run_cmd([exe, "-d", str(SPLITS_ID), "--labeled_cases_file", str(lst), "--overwrite"], timeout=120)
    with open(splits_file) as f:
        (fold,) = json.load(f)
    assert fold["train"] == ["synth001_frame01", "synth001_frame02", "synth004_frame01", "synth004_frame02"]


def test_case_ids_come_from_labeled_preprocessed_folder(raw_only_dataset):
    """A preprocessed labeled folder wins over raw imagesTr; *_unlabeled folders are never training cases."""
    assert get_training_case_ids(raw_only_dataset["name"])[0] == raw_only_dataset["cases"]
    lab = os.path.join(raw_only_dataset["pre"], "nnUNetPlans_2d")
    unl = os.path.join(raw_only_dataset["pre"], "nnUNetPlans_2d_unlabeled")
    os.makedirs(lab)
    os.makedirs(unl)
    for c in raw_only_dataset["cases"][:-1]:  # pretend the last case was dropped
        for s in (".b2nd", "_seg.b2nd", ".pkl"):
            open(os.path.join(lab, c + s), "w").close()
    for s in (".b2nd", "_seg.b2nd", ".pkl"):
        open(os.path.join(unl, "extra_case" + s), "w").close()
    ids, source = get_training_case_ids(raw_only_dataset["name"])
    assert ids == raw_only_dataset["cases"][:-1] and "nnUNetPlans_2d" in source
    assert DEFAULT_PATIENT_REGEX  # documented default is importable
