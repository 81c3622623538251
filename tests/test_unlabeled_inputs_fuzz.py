"""Fuzz test of the input checks of nnUNetv2_mona_preprocess_unlabeled: random folders of case
files (odd names, missing or extra channels, wrong endings, collisions with labeled ids) either
give exactly the cases a person would read off the folder, or a clear UnlabeledDataError; never
another exception, and the answer is the same on a second call."""
import os
import random
import re

import pytest

from nnunet_mona.data._prep_inputs import UnlabeledDataError, check_no_collisions, collect_unlabeled_cases

ENDING = ".nii.gz"
CHARS = "abcXYZ019_-."


def _random_case_id(rng: random.Random) -> str:
    return "".join(rng.choice(CHARS) for _ in range(rng.randint(1, 12)))


def _expected(files, num_channels):
    """What the folder holds, read the way the docs describe (hidden files, e.g. a case id starting
    with '.', are ignored); None if it must be refused."""
    files = [f for f in files if not f.startswith(".")]
    if not files:
        return None
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ENDING) + "$")
    cases = {}
    for f in files:
        m = pattern.match(f)
        if m is None:
            return None
        cases.setdefault(m.group(1), set()).add(int(m.group(2)))
    if any(ch != set(range(num_channels)) for ch in cases.values()):
        return None
    return sorted(cases)


@pytest.mark.parametrize("seed", range(40))
def test_random_unlabeled_folders(tmp_path, seed):
    rng = random.Random(seed)
    num_channels = rng.choice([1, 1, 2])
    folder = tmp_path / "imagesUnlabeled"
    folder.mkdir()
    files = set()
    for _ in range(rng.randint(0, 6)):
        case = _random_case_id(rng)
        channels = list(range(num_channels))
        roll = rng.random()
        if roll < 0.1:
            channels = channels[:-1]  # a missing channel
        elif roll < 0.2:
            channels.append(num_channels)  # an extra channel
        for c in channels:
            ending = ENDING if rng.random() > 0.1 else rng.choice([".nii", ".mha", ".png"])
            files.add(f"{case}_{c:04d}{ending}")
    if rng.random() < 0.1:
        files.add("notes.txt")
    for f in files:
        (folder / f).write_bytes(b"")
    if rng.random() < 0.2:
        (folder / ".DS_Store").write_bytes(b"")  # hidden files are ignored

    expected = _expected(sorted(files), num_channels)
    for _ in range(2):  # consistent on a second call
        if expected is None:
            with pytest.raises(UnlabeledDataError) as e:
                collect_unlabeled_cases(str(folder), ENDING, num_channels)
            assert str(folder) in str(e.value)  # says where the problem is
        else:
            cases = collect_unlabeled_cases(str(folder), ENDING, num_channels)
            assert sorted(cases) == expected
            for case, paths in cases.items():
                assert [os.path.basename(p) for p in paths] == [f"{case}_{c:04d}{ENDING}" for c in range(num_channels)]


def test_collisions_with_labeled_cases_are_named(tmp_path):
    with pytest.raises(UnlabeledDataError, match="case_b"):
        check_no_collisions(["case_a", "case_b"], {"case_b", "case_c"}, str(tmp_path))
    check_no_collisions(["case_a"], {"case_b"}, str(tmp_path))


def test_missing_folder_says_how_to_fix(tmp_path):
    with pytest.raises(UnlabeledDataError, match="Create it"):
        collect_unlabeled_cases(str(tmp_path / "nope"), ENDING, 1)
