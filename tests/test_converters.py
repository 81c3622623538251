"""Tests of the ACDC converters (nnunet_mona.conversion) on tiny fake sources in both formats.

Pixel values encode (case, slice) so that Z order and case identity can be checked exactly.
"""
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

h5py = pytest.importorskip("h5py")

from nnunet_mona.conversion import acdc_h5, acdc_official  # noqa: E402
from nnunet_mona.conversion.common import (LABELED_PATIENT_LISTS, ConversionError, patient_of,  # noqa: E402
                                           write_datasets)

# 7 labeled patients (the 1/3/7 lists) + 2 more training patients; 2 evaluation patients
TRAIN_PATIENTS = [99, 38, 50, 100, 58, 21, 49, 20, 72]
EVAL_PATIENTS = [28, 85]
YX = (6, 5)


def n_slices(patient: int, frame: int) -> int:
    return 3 + (patient + frame) % 3  # 3..5 slices


def fake_volume(patient: int, frame: int):
    """image[z] == patient*1000 + frame*100 + z (scaled into [0, 1]); label varies with z and position."""
    z = n_slices(patient, frame)
    image = np.empty((z,) + YX, np.float32)
    label = np.zeros((z,) + YX, np.uint8)
    for k in range(z):
        image[k] = (patient * 1000 + frame * 100 + k) / 200000.0
        label[k, : k + 1, 1:4] = (k % 3) + 1
        label[k, -1, -1] = (patient + frame) % 4
    return image, label


def decode(image: np.ndarray) -> np.ndarray:
    """Per-slice code patient*1000 + frame*100 + z."""
    return np.round(image[:, 0, 0].astype(np.float64) * 200000.0).astype(int)


def make_h5_source(root, slices_subdir: bool = False):
    """ACDC/ in the SSL4MIS h5 format, slice files written (and listed) in shuffled order."""
    acdc = root / "ACDC"
    data = acdc / "data"
    slice_dir = data / "slices" if slices_subdir else data
    slice_dir.mkdir(parents=True)
    train = [f"patient{p:03d}_frame{f:02d}" for p in TRAIN_PATIENTS for f in (1, 2)]
    val = [f"patient{p:03d}_frame{f:02d}" for p in EVAL_PATIENTS for f in (1, 2)]
    slice_names = []
    for name in train:
        image, label = fake_volume(int(name[7:10]), int(name[-2:]))
        for k in range(image.shape[0]):
            slice_names.append((f"{name}_slice_{k + 1}", image[k], label[k]))  # SSL4MIS numbers from 1
    random.Random(0).shuffle(slice_names)
    for n, img, lab in slice_names:
        with h5py.File(slice_dir / f"{n}.h5", "w") as f:
            f.create_dataset("image", data=img)
            f.create_dataset("label", data=lab)
    for name in val:
        image, label = fake_volume(int(name[7:10]), int(name[-2:]))
        with h5py.File(data / f"{name}.h5", "w") as f:
            f.create_dataset("image", data=image)
            f.create_dataset("label", data=label)
    (acdc / "train.list").write_text("\n".join(train) + "\n")
    (acdc / "train_slices.list").write_text("\n".join(n for n, _, _ in slice_names) + "\n")
    (acdc / "val.list").write_text("\n".join(val) + "\n")
    return acdc


SPACING = (1.5625, 1.40625, 10.0)
ORIGIN = (-3.0, 7.5, 12.0)
ES_FRAME = {p: 8 + p % 5 for p in TRAIN_PATIENTS + EVAL_PATIENTS}


def make_official_source(root, with_testing: bool = True):
    """database/training|testing/patientXXX/ with Info.cfg, ED (frame 1) / ES frames, _gt, a 4D file."""
    db = root / "database"
    for split, patients in (("training", TRAIN_PATIENTS), ("testing", EVAL_PATIENTS if with_testing else [])):
        for p in patients:
            pdir = db / split / f"patient{p:03d}"
            pdir.mkdir(parents=True)
            (pdir / "Info.cfg").write_text(f"ED: 1\nES: {ES_FRAME[p]}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\n")
            for idx, frame in enumerate((1, ES_FRAME[p])):
                image, label = fake_volume(p, idx + 1)
                img = sitk.GetImageFromArray((image * 200000).astype(np.int16))
                img.SetSpacing(SPACING)
                img.SetOrigin(ORIGIN)
                lab = sitk.GetImageFromArray(label)
                lab.CopyInformation(img)
                sitk.WriteImage(img, str(pdir / f"patient{p:03d}_frame{frame:02d}.nii.gz"))
                sitk.WriteImage(lab, str(pdir / f"patient{p:03d}_frame{frame:02d}_gt.nii.gz"))
            sitk.WriteImage(sitk.Image([4, 3, 2, 5], sitk.sitkInt16), str(pdir / f"patient{p:03d}_4d.nii.gz"))
    return db


@pytest.fixture
def raw(tmp_path, monkeypatch):
    d = tmp_path / "nnUNet_raw"
    d.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(d))
    return d


def cases_in(folder, sub):
    return sorted(f[: -len("_0000.nii.gz")] if sub.startswith("images") else f[: -len(".nii.gz")]
                  for f in os.listdir(folder / sub))


def load_split(folder, n):
    with open(folder / f"splits_final_{n}labeled.json") as f:
        splits = json.load(f)
    assert len(splits) == 1
    return splits[0]


def check_splits(folder, train_cases, counts=(1, 3, 7)):
    for n in counts:
        s = load_split(folder, n)
        lab = set(LABELED_PATIENT_LISTS[n])
        assert {patient_of(c) for c in s["train"]} == lab
        assert s["val"] == s["train"]
        # all frames of a labeled patient in train, none in unlabeled
        assert sorted(s["train"]) == sorted(c for c in train_cases if patient_of(c) in lab)
        assert not {patient_of(c) for c in s["unlabeled"]} & lab
        assert sorted(s["train"] + s["unlabeled"]) == sorted(train_cases)


def test_h5_split_mode(tmp_path, raw):
    src = make_h5_source(tmp_path)
    (folder,) = write_datasets(acdc_h5.build_source(str(src)), 27, "ACDC_SSL", progress_every=5)
    assert folder == str(raw / "Dataset027_ACDC_SSL")
    folder = raw / "Dataset027_ACDC_SSL"
    tr = cases_in(folder, "imagesTr")
    assert tr == cases_in(folder, "labelsTr") and len(tr) == 2 * len(TRAIN_PATIENTS)
    assert cases_in(folder, "imagesTs") == cases_in(folder, "labelsTs")
    assert {patient_of(c) for c in cases_in(folder, "imagesTs")} == {f"patient{p:03d}" for p in EVAL_PATIENTS}
    assert not {patient_of(c) for c in tr} & {patient_of(c) for c in cases_in(folder, "imagesTs")}
    for sub, lsub in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        for case in cases_in(folder, sub):
            p, fr = int(case[7:10]), int(case[-2:])
            img = sitk.ReadImage(str(folder / sub / f"{case}_0000.nii.gz"))
            lab = sitk.ReadImage(str(folder / lsub / f"{case}.nii.gz"))
            exp_img, exp_lab = fake_volume(p, fr)
            arr = sitk.GetArrayFromImage(img)
            assert arr.shape == exp_img.shape
            # Z order: slice_10 would follow slice_9 (numeric sort); here codes must increase by 1 per slice
            assert list(decode(arr)) == [p * 1000 + fr * 100 + k for k in range(exp_img.shape[0])]
            np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), exp_lab)
            assert img.GetSpacing() == (1.0, 1.0, acdc_h5.DEFAULT_Z_SPACING) == lab.GetSpacing()
    ds = json.loads((folder / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
    assert ds["channel_names"] == {"0": "MRI"} and ds["numTraining"] == len(tr)
    check_splits(folder, tr)
    assert not (folder / "splits_final.json").exists()


def test_h5_numeric_slice_order(tmp_path, raw):
    """More than 9 slices, slices in data/slices/, no train_slices.list: slice_10 after slice_9."""
    acdc = tmp_path / "ACDC"
    (acdc / "data" / "slices").mkdir(parents=True)
    for k in random.Random(1).sample(range(1, 13), 12):
        with h5py.File(acdc / "data" / "slices" / f"patient099_frame01_slice_{k}.h5", "w") as f:
            f.create_dataset("image", data=np.full(YX, k / 100.0, np.float32))
            f.create_dataset("label", data=np.zeros(YX, np.uint8))
    with h5py.File(acdc / "data" / "patient001_frame01.h5", "w") as f:
        f.create_dataset("image", data=np.zeros((2,) + YX, np.float32))
        f.create_dataset("label", data=np.zeros((2,) + YX, np.uint8))
    (acdc / "train.list").write_text("patient099_frame01\n")
    (acdc / "val.list").write_text("patient001_frame01\n")
    write_datasets(acdc_h5.build_source(str(tmp_path)), 30, "Order", counts=[1], default_split=1)
    folder = raw / "Dataset030_Order"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "imagesTr" / "patient099_frame01_0000.nii.gz")))
    assert list(np.round(arr[:, 0, 0] * 100).astype(int)) == list(range(1, 13))
    assert json.loads((folder / "splits_final.json").read_text()) == [load_split(folder, 1)]


def test_h5_images_mode(tmp_path, raw):
    src = make_h5_source(tmp_path, slices_subdir=True)
    folders = write_datasets(acdc_h5.build_source(str(src)), 40, "ACDC_SSL", mode="images", counts=[1, 3],
                             default_split=3)
    assert [os.path.basename(f) for f in folders] == ["Dataset040_ACDC_SSL_1lab", "Dataset041_ACDC_SSL_3lab"]
    all_train = [f"patient{p:03d}_frame{f:02d}" for p in TRAIN_PATIENTS for f in (1, 2)]
    for n, folder in zip((1, 3), folders):
        folder = raw / os.path.basename(folder)
        lab = set(LABELED_PATIENT_LISTS[n])
        tr, unl = cases_in(folder, "imagesTr"), cases_in(folder, "imagesUnlabeled")
        assert {patient_of(c) for c in tr} == lab and cases_in(folder, "labelsTr") == tr
        assert sorted(tr + unl) == sorted(all_train) and not {patient_of(c) for c in unl} & lab
        s = load_split(folder, n)
        # 'unlabeled' may only name imagesTr cases: in images mode the pool is imagesUnlabeled/
        assert sorted(s["train"]) == tr and s["unlabeled"] == []
        assert (folder / "splits_final.json").exists() == (n == 3)
        assert json.loads((folder / "dataset.json").read_text())["numTraining"] == len(tr)
        # copied volumes are identical to freshly read ones
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "imagesTr" / "patient099_frame02_0000.nii.gz")))
        assert list(decode(arr)) == [99200 + k for k in range(arr.shape[0])]


def test_official(tmp_path, raw):
    db = make_official_source(tmp_path)
    write_datasets(acdc_official.build_source(str(tmp_path)), 28, "ACDC")
    folder = raw / "Dataset028_ACDC"
    tr = cases_in(folder, "imagesTr")
    assert tr == cases_in(folder, "labelsTr")
    assert tr == sorted(f"patient{p:03d}_frame{f:02d}" for p in TRAIN_PATIENTS for f in (1, ES_FRAME[p]))
    ts = cases_in(folder, "imagesTs")
    assert {patient_of(c) for c in ts} == {f"patient{p:03d}" for p in EVAL_PATIENTS}
    assert cases_in(folder, "labelsTs") == ts
    for sub, lsub in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        for case in cases_in(folder, sub):
            p, fr = int(case[7:10]), int(case[-2:])
            img = sitk.ReadImage(str(folder / sub / f"{case}_0000.nii.gz"))
            lab = sitk.ReadImage(str(folder / lsub / f"{case}.nii.gz"))
            src = sitk.ReadImage(str(db / ("training" if sub == "imagesTr" else "testing") / case[:10] /
                                     f"{case}.nii.gz"))
            exp_img, exp_lab = fake_volume(p, 1 if fr == 1 else 2)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(src))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), exp_lab)
            for im in (img, lab):
                np.testing.assert_allclose(im.GetSpacing(), SPACING, rtol=1e-6)
                np.testing.assert_allclose(im.GetOrigin(), ORIGIN, rtol=1e-6)
                np.testing.assert_allclose(im.GetDirection(), src.GetDirection())
            assert lab.GetPixelID() == sitk.sitkUInt8
    check_splits(folder, tr)


def test_official_val_patients(tmp_path, raw):
    make_official_source(tmp_path, with_testing=False)
    with pytest.raises(ConversionError, match="no testing/ folder"):
        acdc_official.build_source(str(tmp_path / "database"))
    src = acdc_official.build_source(str(tmp_path / "database"), val_patients=["20", "patient072"])
    assert {patient_of(c) for c in src.eval_cases} == {"patient020", "patient072"}
    assert not {patient_of(c) for c in src.train_cases} & {"patient020", "patient072"}
    with pytest.raises(ConversionError, match="not among the training patients"):
        write_datasets(acdc_official.build_source(str(tmp_path), val_patients=["99"]), 29, "X", counts=[1])


def test_errors(tmp_path, raw):
    # not the expected format: says what was expected and what was found
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "foo.txt").write_text("x")
    with pytest.raises(ConversionError, match=r"expected train.list.*found: \['foo.txt'\]"):
        acdc_h5.build_source(str(tmp_path / "junk"))
    with pytest.raises(ConversionError, match=r"expected training/patientXXX/.*found: \['foo.txt'\]"):
        acdc_official.build_source(str(tmp_path / "junk"))
    src = make_h5_source(tmp_path / "h5")
    # a missing slice (gap in Z)
    os.remove(src / "data" / "patient020_frame01_slice_2.h5")
    lst = [l for l in (src / "train_slices.list").read_text().split() if l != "patient020_frame01_slice_2"]
    (src / "train_slices.list").write_text("\n".join(lst))
    with pytest.raises(ConversionError, match="not contiguous"):
        acdc_h5.build_source(str(src))
    # listed slice file missing
    (src / "train_slices.list").write_text("\n".join(lst + ["patient020_frame01_slice_2"]))
    with pytest.raises(ConversionError, match="not found"):
        acdc_h5.build_source(str(src))
    # evaluation patient also in training
    src2 = make_h5_source(tmp_path / "h5b")
    (src2 / "val.list").write_text("patient099_frame01\n")
    with h5py.File(src2 / "data" / "patient099_frame01.h5", "w") as f:
        f.create_dataset("image", data=np.zeros((2,) + YX, np.float32))
        f.create_dataset("label", data=np.zeros((2,) + YX, np.uint8))
    with pytest.raises(ConversionError, match="evaluation patients also appear in training"):
        write_datasets(acdc_h5.build_source(str(src2)), 27, "Leak")
    # bad label values; nothing left behind
    (src2 / "val.list").write_text("patient028_frame01\n")
    with h5py.File(src2 / "data" / "patient028_frame01.h5", "a") as f:
        f["label"][0, 0, 0] = 7
    with pytest.raises(ConversionError, match="unexpected label values"):
        write_datasets(acdc_h5.build_source(str(src2)), 27, "BadLabel", counts=[1])
    assert os.listdir(raw) == []
    # official: Info.cfg missing / frame missing
    db = make_official_source(tmp_path / "off")
    os.remove(db / "training" / "patient020" / "Info.cfg")
    with pytest.raises(ConversionError, match="Info.cfg missing"):
        acdc_official.build_source(str(db))
    (db / "training" / "patient020" / "Info.cfg").write_text("ED: 1\nES: 3\n")
    with pytest.raises(ConversionError, match="frame named in Info.cfg"):
        acdc_official.build_source(str(db))


def test_existing_output_and_ids(tmp_path, raw):
    src = make_h5_source(tmp_path)
    source = acdc_h5.build_source(str(src))
    write_datasets(source, 27, "ACDC_SSL", counts=[1])
    with pytest.raises(ConversionError, match="output dataset exists.*--overwrite"):
        write_datasets(source, 27, "ACDC_SSL", counts=[1])
    with pytest.raises(ConversionError, match="already used"):
        write_datasets(source, 27, "Other", counts=[1])
    with pytest.raises(ConversionError, match="default_split"):
        write_datasets(source, 28, "X", counts=[1], default_split=3)
    write_datasets(source, 27, "ACDC_SSL", counts=[3], overwrite=True)
    assert sorted(f for f in os.listdir(raw / "Dataset027_ACDC_SSL") if f.startswith("splits")) == \
        ["splits_final_3labeled.json"]


def _cmd(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def test_command_lines(tmp_path, raw):
    src = make_h5_source(tmp_path / "h5")
    env = dict(os.environ, nnUNet_raw=str(raw))
    out = subprocess.run([_cmd("nnUNetv2_mona_convert_acdc_h5"), "-i", str(src), "-d", "27", "--labeled_patients",
                          "1", "3", "--default_split", "--progress_every", "4"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "4/22 volumes" in out.stdout
    folder = raw / "Dataset027_ACDC_SSL"
    assert json.loads((folder / "splits_final.json").read_text()) == [load_split(folder, 3)]
    again = subprocess.run([_cmd("nnUNetv2_mona_convert_acdc_h5"), "-i", str(src)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    db = make_official_source(tmp_path / "off", with_testing=False)
    out = subprocess.run([_cmd("nnUNetv2_mona_convert_acdc"), "-i", str(db.parent), "-d", "28", "--val_patients",
                          "20", "72", "--unlabeled_mode", "images"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert cases_in(raw / "Dataset028_ACDC_3lab", "imagesTs") == sorted(
        f"patient{p:03d}_frame{f:02d}" for p in (20, 72) for f in (1, ES_FRAME[p]))
