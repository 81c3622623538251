"""The demo's multi-scanner scenario (nnunet_mona.demo.synthetic_dataset): what the labeled scanner shows does not
depend on which patients happen to be labeled, the farther scanners image the wall fainter but never make it vanish,
and the option leaves the data of the single-scanner datasets untouched."""
import os

import numpy as np
import SimpleITK as sitk

from nnunet_mona.demo import synthetic_dataset as sd

TISSUE = 0.35  # the background tissue's mean brightness in synthesize_case


def _anatomies(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [sd.sample_anatomy(rng, (64, 64), 0.0) for _ in range(n)]


def test_labeled_scanner_wall_is_the_scanners_not_the_patients():
    drawn = [a["intensity"]["wall"] for a in _anatomies(200)]
    seen = [sd.seen_by_scanner(a, 0.0)["intensity"]["wall"] for a in _anatomies(200)]
    assert np.ptp(drawn) > 0.09  # the patients' own draws spread over 0.5-0.6 ...
    assert np.ptp(seen) < 0.025  # ... the labeled scanner shows them all alike
    assert abs(np.mean(seen) - sd.SCANNER_WALL) < 0.005


def test_wall_fades_with_the_shift_but_stays_brighter_than_tissue():
    for anatomy in _anatomies(100, seed=1):
        walls = [sd.seen_by_scanner(anatomy, s)["intensity"]["wall"] for s in (0.0, 0.5, 1.0)]
        assert walls[0] > walls[1] > walls[2]
        assert walls[2] - TISSUE > 0.06, "at the farthest scanner the wall must stay learnable"
        cavity, noise = (sd.seen_by_scanner(anatomy, 1.0)[k] for k in ("intensity", "noise"))
        assert cavity["cavity"] < anatomy["intensity"]["cavity"] and noise > anatomy["noise"]


def _read(folder: str, sub: str) -> dict:
    path = os.path.join(folder, sub)
    return {f: sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(path, f))) for f in sorted(os.listdir(path))}


def test_scanner_mode_keeps_anatomy_and_single_scanner_data_unchanged(tmp_path):
    """The labeled patients' scanner assignment draws no random number: with or without scanner_shift, a seed
    gives the same anatomy (labels) for every role, so the single-scanner datasets are what they were."""
    kwargs = dict(dataset_id=997, n_labeled_patients=2, n_unlabeled_patients=2, n_test_patients=2, n_slices=2,
                  size=(32, 32), lesion_probability=0.0, seed=3)
    roles_plain = sd.write_synthetic_dataset(str(tmp_path / "a"), scanner_shift=0.0, **kwargs)
    roles_shift = sd.write_synthetic_dataset(str(tmp_path / "b"), scanner_shift=1.0, **kwargs)
    assert roles_plain == roles_shift
    a, b = (str(tmp_path / r / "Dataset997_MonaSynthetic") for r in ("a", "b"))
    # the record of scanners: only for the multi-scanner dataset; labeled cases at the labeled scanner (0)
    assert sd.read_scanner_shifts(a) is None
    shifts = sd.read_scanner_shifts(b)
    assert sorted(shifts) == sorted(sum(roles_shift.values(), []))
    assert all(shifts[c] == 0.0 for c in roles_shift["labeled"])
    assert all(0.0 <= shifts[c] <= 1.0 for c in roles_shift["test"] + roles_shift["unlabeled"])
    assert len({shifts[c] for c in roles_shift["test"]}) == 2  # one scanner per patient, 2 test patients
    labels_a, labels_b = _read(a, "labelsTr"), _read(b, "labelsTr")
    assert labels_a.keys() == labels_b.keys() and all(np.array_equal(labels_a[k], labels_b[k]) for k in labels_a)
    # the labeled images differ only in the wall's brightness (the scanner's instead of the patient's)
    images_b = _read(b, "imagesTr")
    for name, image_a in _read(a, "imagesTr").items():
        image_b = images_b[name]
        label = labels_a[name.replace("_0000", "")]
        assert np.allclose(image_a[label != sd.LABELS["wall"]], image_b[label != sd.LABELS["wall"]])
