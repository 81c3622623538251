"""Checks that run before any unlabeled case is preprocessed, each failing with a message that says
what is wrong and how to fix it. Nothing in here writes to disk."""
import os
import re
from typing import Dict, List, Set

import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mona.data._prep_manifest import UnlabeledDataError


def resolve_planned_dataset(dataset_name_or_id, configuration_name: str, plans_identifier: str) -> dict:
    """Find the dataset and its existing plans/configuration/labeled preprocessed folder.

    Returns a dict with ``dataset_name``, ``raw_dataset_folder``, ``preprocessed_dataset_folder``,
    ``plans_manager``, ``configuration_manager``, ``dataset_json``, ``labeled_folder``.
    """
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as e:
        raise UnlabeledDataError(f"Dataset {dataset_name_or_id!r} not found: {e}") from None
    plan_cmd = f"nnUNetv2_plan_and_preprocess -d {dataset_name_or_id} -c {configuration_name}"
    raw_dataset_folder = os.path.join(os.fspath(nnUNet_raw), dataset_name)
    if not os.path.isdir(raw_dataset_folder):
        raise UnlabeledDataError(f"Raw dataset folder {raw_dataset_folder} not found (the unlabeled images are read "
                                 f"from there). Check nnUNet_raw.")
    pre = os.path.join(os.fspath(nnUNet_preprocessed), dataset_name)
    plans_file = os.path.join(pre, plans_identifier + ".json")
    if not os.path.isfile(plans_file) or not os.path.isfile(os.path.join(pre, "dataset.json")):
        raise UnlabeledDataError(
            f"{dataset_name} has not been planned yet ({plans_file} or {pre}/dataset.json missing). Unlabeled "
            f"images are preprocessed with the plans of the labeled data, so plan and preprocess those first:\n"
            f"    {plan_cmd}" + ("" if plans_identifier == "nnUNetPlans" else f"  (plans: {plans_identifier})"))
    plans_manager = PlansManager(plans_file)
    if configuration_name not in plans_manager.available_configurations:
        raise UnlabeledDataError(f"Configuration {configuration_name!r} is not in {plans_file}. Available: "
                                 f"{plans_manager.available_configurations}")
    configuration_manager = plans_manager.get_configuration(configuration_name)
    labeled_folder = os.path.join(pre, configuration_manager.data_identifier)
    if not os.path.isdir(labeled_folder) or not os.listdir(labeled_folder):
        raise UnlabeledDataError(
            f"{dataset_name} is planned but configuration {configuration_name!r} has not been preprocessed "
            f"({labeled_folder} missing or empty). Run:\n    nnUNetv2_preprocess -d {dataset_name_or_id} "
            f"-c {configuration_name} -plans_name {plans_identifier}\n(or {plan_cmd})")
    if configuration_manager.preprocessor_class is None:
        raise UnlabeledDataError(f"Preprocessor class {configuration_manager.preprocessor_name!r} of configuration "
                                 f"{configuration_name!r} was not found in nnunetv2.preprocessing.")
    return {"dataset_name": dataset_name, "raw_dataset_folder": raw_dataset_folder,
            "preprocessed_dataset_folder": pre, "plans_manager": plans_manager,
            "configuration_manager": configuration_manager,
            "dataset_json": load_json(os.path.join(pre, "dataset.json")), "labeled_folder": labeled_folder}


def num_channels_of(dataset_json: dict) -> int:
    return len(dataset_json["channel_names"] if "channel_names" in dataset_json else dataset_json["modality"])


def collect_unlabeled_cases(raw_unlabeled_folder: str, file_ending: str, num_channels: int) -> Dict[str, List[str]]:
    """``{case_id: [channel files in channel order]}`` for ``<case>_<XXXX><file_ending>`` files.

    Fails on: missing folder, no cases, a file with another ending or no 4-digit channel suffix, a case
    with a missing or an extra channel. Hidden files (``.DS_Store``, ...) are ignored.
    """
    naming = f"<case>_0000{file_ending}" + (f" ... <case>_{num_channels - 1:04d}{file_ending}"
                                           if num_channels > 1 else "")
    if not os.path.isdir(raw_unlabeled_folder):
        raise UnlabeledDataError(f"Folder with unlabeled images not found: {raw_unlabeled_folder}\nCreate it and put "
                                 f"the images there, named like imagesTr: {naming}")
    files = sorted(f for f in os.listdir(raw_unlabeled_folder)
                   if not f.startswith(".") and os.path.isfile(os.path.join(raw_unlabeled_folder, f)))
    if not files:
        raise UnlabeledDataError(f"No unlabeled images in {raw_unlabeled_folder} (expected files named {naming}).")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    wrong_ending = [f for f in files if not f.endswith(file_ending)]
    if wrong_ending:
        raise UnlabeledDataError(
            f"{len(wrong_ending)} file(s) in {raw_unlabeled_folder} do not have the dataset's file ending "
            f"{file_ending!r} (dataset.json 'file_ending'): {wrong_ending[:10]}. Convert or remove them.")
    bad_names = [f for f in files if pattern.match(f) is None]
    if bad_names:
        raise UnlabeledDataError(f"File(s) in {raw_unlabeled_folder} without a 4-digit channel suffix: "
                                 f"{bad_names[:10]}. Expected {naming}.")
    cases: Dict[str, Dict[int, str]] = {}
    for f in files:
        m = pattern.match(f)
        cases.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(raw_unlabeled_folder, f)
    expected = set(range(num_channels))
    problems = []
    for c, chans in sorted(cases.items()):
        missing, extra = sorted(expected - set(chans)), sorted(set(chans) - expected)
        if missing or extra:
            problems.append(f"{c}: " + ", ".join(
                ([f"missing channel(s) {['%04d' % i for i in missing]}"] if missing else []) +
                ([f"unexpected channel(s) {['%04d' % i for i in extra]}"] if extra else [])))
    if problems:
        raise UnlabeledDataError(
            f"Wrong channels in {raw_unlabeled_folder}: the dataset has {num_channels} channel(s) "
            f"({naming}), but\n  " + "\n  ".join(problems[:20]))
    return {c: [chans[i] for i in range(num_channels)] for c, chans in sorted(cases.items())}


def labeled_training_case_ids(raw_dataset_folder: str, dataset_json: dict, labeled_folder: str) -> Set[str]:
    """Ids of labeled training cases: the labeled preprocessed folder plus raw imagesTr (or dataset.json's
    'dataset' dict)."""
    ids = {f[:-5] for f in os.listdir(labeled_folder) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd")}
    ids |= {f[:-4] for f in os.listdir(labeled_folder) if f.endswith(".npz")}
    if "dataset" in dataset_json:
        ids |= set(dataset_json["dataset"].keys())
    images_tr = os.path.join(raw_dataset_folder, "imagesTr")
    if os.path.isdir(images_tr):
        fe = dataset_json["file_ending"]
        ids |= {f[:-(len(fe) + 5)] for f in os.listdir(images_tr) if f.endswith(fe) and len(f) > len(fe) + 5}
    return ids


def check_no_collisions(case_ids, labeled_ids: Set[str], raw_unlabeled_folder: str) -> None:
    """An unlabeled case must not share its id with a labeled training case (the trainer keys cases by id)."""
    clash = sorted(set(case_ids) & set(labeled_ids))
    if clash:
        raise UnlabeledDataError(
            f"{len(clash)} unlabeled case id(s) in {raw_unlabeled_folder} are also labeled training cases: "
            f"{clash[:10]}. Rename them (e.g. prefix 'unl_'), or, if they are the same images, remove them from "
            f"the unlabeled folder.")


def check_images_readable(cases: Dict[str, List[str]], reader_writer_class) -> None:
    """Open every file before any work starts. SimpleITK-based readers: header only (cheap), also checks that
    the channels of a case have the same size. Other readers: a full read with the plans' reader."""
    header_only = "SimpleITK" in reader_writer_class.__name__
    for c, files in cases.items():
        if header_only:
            sizes = []
            for f in files:
                try:
                    reader = sitk.ImageFileReader()
                    reader.SetFileName(f)
                    reader.ReadImageInformation()
                except Exception as e:
                    raise UnlabeledDataError(f"Cannot read image file {f} (case {c}): "
                                             f"{str(e).strip().splitlines()[-1] if str(e).strip() else e!r}") from None
                sizes.append(tuple(reader.GetSize()))
            if len(set(sizes)) > 1:
                raise UnlabeledDataError(f"The channels of case {c} have different sizes {sizes}: {files}")
        else:
            try:
                reader_writer_class().read_images(files)
            except Exception as e:
                raise UnlabeledDataError(f"Cannot read image file(s) {files} (case {c}) with "
                                         f"{reader_writer_class.__name__}: {e!r}") from None
