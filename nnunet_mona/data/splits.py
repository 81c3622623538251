"""``nnUNetv2_mona_make_splits``: splits_final.json for simulated label scarcity.

Each fold is ``{"train": [...], "val": [...], "unlabeled": [...]}``. nnU-Net reads only ``train`` and
``val`` and ignores the extra key; the nnunet_mona trainers read ``unlabeled`` (cases whose labels exist on
disk but are hidden from training). Cases are grouped by patient so that e.g. the ED and ES frames of one
ACDC patient are always on the same side:

* ``train``     = all cases of the fold's labeled patients,
* ``val``       = all cases of ``num_val_patients`` other patients; with 0 (default) ``val = train``, like
                  nnU-Net's fold ``all`` (no held-out validation: with 3 labeled patients there is none to spare),
* ``unlabeled`` = all remaining cases (val patients are never in the unlabeled pool).

Patient ids come from a regex: the first capturing group that took part in the match (``re.search``) is the
patient id; a case the regex does not match is its own patient. The default turns ``patient001_frame01``
into ``patient001``.
"""
import json
import os
import random
import re
import sys
from math import comb
from typing import Dict, Iterable, List, Sequence, Union

from nnunet_mona.cli.arguments import command_parser

DEFAULT_PATIENT_REGEX = r"^(.+?)_frame\d+$"
SPLITS_FILE = "splits_final.json"


class SplitsError(ValueError):
    """Invalid split request; the message says what is wrong."""


def _compile(patient_regex: str) -> "re.Pattern":
    try:
        pattern = re.compile(patient_regex)
    except re.error as e:
        raise SplitsError(f"Invalid --patient_regex {patient_regex!r}: {e}") from None
    if pattern.groups < 1:
        raise SplitsError(f"--patient_regex {patient_regex!r} has no capturing group; its first group must capture "
                          f"the patient id, e.g. {DEFAULT_PATIENT_REGEX!r}")
    return pattern


def _check_unique(items: Sequence[str], what: str) -> None:
    seen, dups = set(), set()
    for i in items:
        (dups if i in seen else seen).add(i)
    if dups:
        raise SplitsError(f"Duplicate {what}: {sorted(dups)[:10]}")


def patient_of(case_id: str, patient_regex: Union[str, "re.Pattern"] = DEFAULT_PATIENT_REGEX) -> str:
    """Patient id of one case (the first participating group of ``re.search``; the case itself if no match)."""
    pattern = _compile(patient_regex) if isinstance(patient_regex, str) else patient_regex
    m = pattern.search(case_id)
    if m is not None:
        for g in m.groups():
            if g:  # first group that took part in the match and is not empty
                return g
    return case_id


def group_cases_by_patient(case_ids: Iterable[str], patient_regex: str = DEFAULT_PATIENT_REGEX) -> Dict[str, List[str]]:
    """``{patient_id: sorted case ids}``, patients sorted. Fails on duplicate case ids or a regex without group."""
    case_ids = list(case_ids)
    _check_unique(case_ids, "case ids")
    pattern = _compile(patient_regex)
    groups: Dict[str, List[str]] = {}
    for c in case_ids:
        groups.setdefault(patient_of(c, pattern), []).append(c)
    return {p: sorted(groups[p]) for p in sorted(groups)}


def resolve_patients(entries: Sequence[str], groups: Dict[str, List[str]], what: str) -> List[str]:
    """Map a list of case ids and/or patient ids to patient ids (a case stands for its whole patient: patients
    are never split). Fails on an empty list, duplicates and unknown entries."""
    entries = [e.strip() for e in entries if e.strip()]
    if not entries:
        raise SplitsError(f"The {what} list is empty.")
    _check_unique(entries, f"entries in the {what} list")
    case_to_patient = {c: p for p, cs in groups.items() for c in cs}
    unknown = [e for e in entries if e not in groups and e not in case_to_patient]
    if unknown:
        raise SplitsError(f"Unknown case/patient id(s) in the {what} list: {unknown[:10]} (known patients e.g. "
                          f"{list(groups)[:5]}, cases e.g. {list(case_to_patient)[:5]})")
    patients = [e if e in groups else case_to_patient[e] for e in entries]
    _check_unique(patients, f"patients in the {what} list (a case and its patient, or two cases of one patient)")
    return patients


def _fold(groups: Dict[str, List[str]], labeled: Sequence[str], val_patients: Sequence[str],
          unlabeled_pool: Sequence[str]) -> dict:
    train = sorted(c for p in labeled for c in groups[p])
    val = sorted(c for p in val_patients for c in groups[p]) if val_patients else list(train)
    taken = set(labeled) | set(val_patients)
    unlabeled = sorted(c for p in unlabeled_pool if p not in taken for c in groups[p])
    return {"train": train, "val": val, "unlabeled": unlabeled}


def _pick_labeled_per_fold(patients: List[str], n: int, num_folds: int, rng: random.Random) -> List[List[str]]:
    """Draw n patients per fold from a stream of fresh shuffles (so folds cover different patients before any
    repeats), then resample a fold whose set already occurred while unused sets remain."""
    stream: List[str] = []
    used, out = set(), []
    for _ in range(num_folds):
        chosen: List[str] = []
        while len(chosen) < n:
            if not stream:
                stream = rng.sample(patients, len(patients))
            p = stream.pop(0)
            if p not in chosen:
                chosen.append(p)
        attempts = 0
        while frozenset(chosen) in used and len(used) < comb(len(patients), n) and attempts < 1000:
            chosen = rng.sample(patients, n)
            attempts += 1
        used.add(frozenset(chosen))
        out.append(sorted(chosen))
    return out


def make_semi_supervised_splits(case_ids: Sequence[str], num_labeled_patients: int, num_folds: int = 5,
                                seed: int = 12345, patient_regex: str = DEFAULT_PATIENT_REGEX,
                                num_val_patients: int = 0, unlabeled_cases: Sequence[str] = None) -> List[dict]:
    """``num_folds`` folds, each with ``num_labeled_patients`` labeled patients (different folds get different
    patients where possible), ``num_val_patients`` validation patients and the rest unlabeled.

    Deterministic for a given seed (independent of the order of ``case_ids``). With ``unlabeled_cases`` (case
    or patient ids) the unlabeled pool is exactly those patients, labeled/val patients are drawn from the
    others, and cases of patients in none of the three are left out of the fold.
    """
    groups = group_cases_by_patient(case_ids, patient_regex)
    if num_folds < 1:
        raise SplitsError(f"num_folds must be >= 1, got {num_folds}")
    if num_labeled_patients < 1:
        raise SplitsError(f"The number of labeled patients must be >= 1, got {num_labeled_patients}")
    if num_val_patients < 0:
        raise SplitsError(f"num_val_patients must be >= 0, got {num_val_patients}")
    pool = list(groups) if unlabeled_cases is None else resolve_patients(unlabeled_cases, groups, "unlabeled")
    candidates = list(groups) if unlabeled_cases is None else [p for p in groups if p not in set(pool)]
    if num_labeled_patients + num_val_patients > len(candidates):
        raise SplitsError(
            f"Asked for {num_labeled_patients} labeled + {num_val_patients} validation patients, but only "
            f"{len(candidates)} patient(s) are available ({len(groups)} patients, {sum(map(len, groups.values()))} "
            f"cases in total{'' if unlabeled_cases is None else f', {len(pool)} reserved as unlabeled'}). "
            f"Check --patient_regex (now {patient_regex!r}) if that number looks wrong.")
    rng = random.Random(seed)
    folds = []
    for labeled in _pick_labeled_per_fold(candidates, num_labeled_patients, num_folds, rng):
        rest = [p for p in candidates if p not in set(labeled)]
        val_patients = sorted(rng.sample(rest, num_val_patients))
        folds.append(_fold(groups, labeled, val_patients, pool))
    return folds


def make_explicit_split(case_ids: Sequence[str], labeled: Sequence[str], patient_regex: str = DEFAULT_PATIENT_REGEX,
                        num_val_patients: int = 0, seed: int = 12345, unlabeled_cases: Sequence[str] = None) -> List[dict]:
    """One fold whose labeled patients are given (case ids or patient ids; a case brings its whole patient)."""
    groups = group_cases_by_patient(case_ids, patient_regex)
    labeled_patients = resolve_patients(labeled, groups, "labeled")
    pool = list(groups) if unlabeled_cases is None else resolve_patients(unlabeled_cases, groups, "unlabeled")
    overlap = sorted(set(pool) & set(labeled_patients)) if unlabeled_cases is not None else []
    if overlap:
        raise SplitsError(f"Patient(s) both labeled and unlabeled: {overlap[:10]}")
    rest = [p for p in groups if p not in set(labeled_patients) and (unlabeled_cases is None or p not in set(pool))]
    if num_val_patients > len(rest):
        raise SplitsError(f"Asked for {num_val_patients} validation patients, but only {len(rest)} are left.")
    val_patients = sorted(random.Random(seed).sample(rest, num_val_patients)) if num_val_patients > 0 else []
    return [_fold(groups, sorted(labeled_patients), val_patients, pool)]


def validate_splits(splits: List[dict]) -> None:
    """Structure and disjointness: train/unlabeled and val/unlabeled never overlap, no duplicates, train non-empty."""
    if not isinstance(splits, list) or not splits:
        raise SplitsError("splits must be a non-empty list of folds")
    for i, f in enumerate(splits):
        for k in ("train", "val", "unlabeled"):
            if k not in f:
                raise SplitsError(f"fold {i} has no {k!r} list")
            _check_unique(f[k], f"cases in fold {i} {k!r}")
        if not f["train"]:
            raise SplitsError(f"fold {i} has no labeled training case")
        both = set(f["unlabeled"]) & (set(f["train"]) | set(f["val"]))
        if both:
            raise SplitsError(f"fold {i}: case(s) both labeled/val and unlabeled: {sorted(both)[:10]}")


def splits_file_for_dataset(dataset_name_or_id) -> str:
    """``nnUNet_preprocessed/DatasetXXX/splits_final.json``."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    return os.path.join(os.fspath(nnUNet_preprocessed), maybe_convert_to_dataset_name(dataset_name_or_id), SPLITS_FILE)


def write_splits(splits: List[dict], splits_file: str, overwrite: bool = False) -> str:
    """Validate and write ``splits`` (atomically) to ``splits_file``; refuse to replace an existing file unless
    ``overwrite``. Returns the path."""
    validate_splits(splits)
    if os.path.exists(splits_file) and not overwrite:
        raise FileExistsError(f"{splits_file} already exists (nnU-Net writes one itself at the first training). "
                              f"Nothing was changed; use --overwrite to replace it.")
    os.makedirs(os.path.dirname(os.path.abspath(splits_file)), exist_ok=True)
    tmp = splits_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(splits, f, indent=2)
    os.replace(tmp, splits_file)
    return splits_file


def load_unlabeled_ids(splits_file: str, fold: Union[int, str]) -> List[str]:
    """The ``unlabeled`` list of ``fold`` (an empty list if that fold has no such key, or for fold 'all', where
    every case is labeled). Raises IndexError for a fold that is not in the file."""
    if str(fold) == "all":
        return []
    fold = int(fold)
    with open(splits_file) as f:
        splits = json.load(f)
    if not 0 <= fold < len(splits):
        raise IndexError(f"Fold {fold} is not in {splits_file} ({len(splits)} fold(s))")
    return list(splits[fold].get("unlabeled", []))


def summarize_splits(splits: List[dict], patient_regex: str = DEFAULT_PATIENT_REGEX) -> str:
    """One line per fold: #labeled patients/cases, #val, #unlabeled."""
    pattern = _compile(patient_regex)
    lines = []
    for i, f in enumerate(splits):
        n_pat = len({patient_of(c, pattern) for c in f["train"]})
        lines.append(f"fold {i}: {n_pat} labeled patient(s) / {len(f['train'])} case(s), {len(f['val'])} val case(s)"
                     f"{' (= train)' if f['val'] == f['train'] else ''}, {len(f['unlabeled'])} unlabeled case(s)")
    return "\n".join(lines)


def _read_list_file(path: str) -> List[str]:
    """One case or patient id per line; blank lines and lines starting with '#' are ignored."""
    with open(path) as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.strip().startswith("#")]


def entry_point(argv=None) -> None:
    parser = command_parser(
        "nnUNetv2_mona_make_splits",
        "Write nnUNet_preprocessed/DatasetXXX/splits_final.json for simulated label scarcity: per fold "
                    "'train' (cases of the labeled patients), 'val' and 'unlabeled' (training cases whose labels "
                    "the nnunet_mona trainers hide). Cases are grouped by patient (see --patient_regex).")
    parser.add_argument("-d", type=str, required=True, help="dataset name or id")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--num_labeled", type=int, help="number of labeled patients per fold (random, seeded)")
    mode.add_argument("--labeled_cases_file", type=str,
                      help="text file with one labeled case id or patient id per line (one fold; a case brings "
                           "its whole patient)")
    mode.add_argument("--labeled_patients", nargs="+", help="labeled patient (or case) ids (one fold)")
    parser.add_argument("--num_folds", type=int, default=5, help="folds for --num_labeled. Default: 5")
    parser.add_argument("--seed", type=int, default=12345, help="random seed (labeled and val patients). "
                                                                 "Default: 12345")
    parser.add_argument("--patient_regex", type=str, default=DEFAULT_PATIENT_REGEX,
                        help="regex applied with re.search to each case id; its first matching group is the "
                             "patient id; cases that do not match are their own patient. Default: %(default)r "
                             "(ACDC patient001_frame01 -> patient001)")
    parser.add_argument("--num_val_patients", type=int, default=0,
                        help="validation patients per fold, never labeled nor unlabeled. Default: 0, then val = "
                             "train (like nnU-Net's fold 'all')")
    parser.add_argument("--unlabeled_cases", nargs="+", default=None,
                        help="restrict the unlabeled pool to these case/patient ids (default: all cases that are "
                             "neither labeled nor val); other patients' cases are then left out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing splits_final.json")
    args = parser.parse_args(argv)
    try:
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        from nnunet_mona.data._splits_case_ids import get_training_case_ids
        dataset_name = maybe_convert_to_dataset_name(args.d)
        out = splits_file_for_dataset(dataset_name)
        if os.path.exists(out) and not args.overwrite:  # fail before any work
            raise FileExistsError(f"{out} already exists (nnU-Net writes one itself at the first training). Nothing "
                                  f"was changed; use --overwrite to replace it.")
        case_ids, source = get_training_case_ids(dataset_name)
        print(f"{dataset_name}: {len(case_ids)} training cases from {source}")
        if args.num_labeled is not None:
            splits = make_semi_supervised_splits(case_ids, args.num_labeled, args.num_folds, args.seed,
                                                 args.patient_regex, args.num_val_patients, args.unlabeled_cases)
        else:
            labeled = args.labeled_patients if args.labeled_patients else _read_list_file(args.labeled_cases_file)
            splits = make_explicit_split(case_ids, labeled, args.patient_regex, args.num_val_patients, args.seed,
                                         args.unlabeled_cases)
        write_splits(splits, out, overwrite=args.overwrite)
    except (SplitsError, FileExistsError, RuntimeError, ValueError, OSError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(1)
    print(summarize_splits(splits, args.patient_regex))
    print(f"Written: {out}")


if __name__ == "__main__":
    entry_point()
