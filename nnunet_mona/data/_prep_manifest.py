"""The manifest of a preprocessed unlabeled folder: which plans made it, and whether it is still current.

``nnUNetv2_preprocess`` never touches ``<data_identifier>_unlabeled``, so after a re-plan (new
normalisation statistics, new spacing, new patch size, ...) the unlabeled arrays silently no
longer match the labeled ones. The manifest stores a hash of everything in the plans that shapes
the preprocessed arrays; :func:`check_unlabeled_folder_is_current` recomputes it from the plans
the trainer uses and refuses a mismatch.

Note: the manifest is a ``.json`` file inside the unlabeled folder, so open that folder with
``nnUNetDatasetBlosc2`` directly, not via nnU-Net's ``infer_dataset_class`` (which asserts a
single file ending besides ``.pkl``).
"""
import hashlib
import json
import os
from typing import List, Union

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mona.data.paths import RAW_UNLABELED_FOLDER, UNLABELED_MANIFEST, unlabeled_preprocessed_folder

MANIFEST_VERSION = 1
# plans entries (outside the configuration) that change the preprocessed arrays
PLANS_KEYS_THAT_SHAPE_THE_DATA = ("transpose_forward", "transpose_backward", "image_reader_writer",
                                  "foreground_intensity_properties_per_channel")
# manifest fields that must agree between a folder and the plans the caller wants to use
IDENTITY_FIELDS = ("plans_identifier", "configuration", "data_identifier", "plans_hash")


class UnlabeledDataError(RuntimeError):
    """Something is wrong with the (raw or preprocessed) unlabeled data; the message says how to fix it."""


class StaleUnlabeledDataError(UnlabeledDataError):
    """The preprocessed unlabeled folder is missing, incomplete or was made with other plans."""


def _as_plans_manager(plans: Union[PlansManager, dict, str]) -> PlansManager:
    return plans if isinstance(plans, PlansManager) else PlansManager(plans)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def compute_plans_hash(plans: Union[PlansManager, dict, str], configuration_name: str) -> str:
    """sha256 of the (inheritance-resolved) configuration dict plus the plans entries derived from the
    dataset fingerprint that preprocessing uses (intensity statistics for normalisation, transposition,
    reader). Any re-plan that could change a preprocessed array changes this hash."""
    pm = _as_plans_manager(plans)
    config = pm.get_configuration(configuration_name).configuration
    relevant = {k: pm.plans.get(k) for k in PLANS_KEYS_THAT_SHAPE_THE_DATA}
    relevant["foreground_intensity_properties_per_channel"] = pm.foreground_intensity_properties_per_channel
    return _hash({"configuration": config, "plans": relevant})


def rerun_command(dataset_name: str, configuration_name: str, plans_identifier: str,
                  raw_folder_name: str = RAW_UNLABELED_FOLDER, overwrite: bool = True) -> str:
    """The exact command that (re)builds the unlabeled folder."""
    try:
        dataset = str(int(dataset_name[7:10])) if dataset_name.startswith("Dataset") else dataset_name
    except ValueError:
        dataset = dataset_name
    cmd = f"nnUNetv2_mona_preprocess_unlabeled -d {dataset} -c {configuration_name} -p {plans_identifier}"
    if raw_folder_name != RAW_UNLABELED_FOLDER:
        cmd += f" -i {raw_folder_name}"
    return cmd + (" --overwrite" if overwrite else "")


def build_manifest(dataset_name: str, plans: Union[PlansManager, dict, str], plans_identifier: str,
                   configuration_name: str, file_ending: str, num_channels: int, case_ids: List[str],
                   raw_folder_name: str, complete: bool) -> dict:
    pm = _as_plans_manager(plans)
    cm = pm.get_configuration(configuration_name)
    return {
        "manifest_version": MANIFEST_VERSION,
        "dataset_name": dataset_name,
        "plans_identifier": plans_identifier,
        "configuration": configuration_name,
        "data_identifier": cm.data_identifier,
        "preprocessor_name": cm.preprocessor_name,
        "plans_hash": compute_plans_hash(pm, configuration_name),
        "file_ending": file_ending,
        "num_channels": int(num_channels),
        "raw_folder_name": raw_folder_name,
        "complete": bool(complete),
        "case_ids": sorted(case_ids),
    }


def write_manifest(folder: str, manifest: dict) -> None:
    """Atomic write (tmp file + rename) so that an interrupted run never leaves half a manifest."""
    path = os.path.join(folder, UNLABELED_MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, path)


def read_manifest(folder: str) -> Union[dict, None]:
    """The manifest of ``folder`` or None if there is none."""
    path = os.path.join(folder, UNLABELED_MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def manifest_differences(found: dict, expected: dict) -> List[str]:
    """Human-readable list of identity fields that differ between two manifests."""
    diffs = []
    for k in IDENTITY_FIELDS:
        if found.get(k) != expected.get(k):
            what = "the plans changed since (re-planned?)" if k == "plans_hash" else \
                f"folder has {found.get(k)!r}, requested {expected.get(k)!r}"
            diffs.append(f"{k}: {what}")
    return diffs


def case_files_present(folder: str, case_id: str) -> bool:
    """A case is complete when its data, mask and properties exist (``save_case`` writes the pkl last)."""
    return all(os.path.isfile(os.path.join(folder, case_id + s)) for s in (".b2nd", "_seg.b2nd", ".pkl"))


def list_case_ids_in_folder(folder: str) -> List[str]:
    """Case ids of the Blosc2 arrays in ``folder`` (what nnU-Net's ``get_identifiers`` would return)."""
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))


def check_unlabeled_folder_is_current(preprocessed_dataset_folder: str, plans_identifier: str,
                                      configuration_name: str, plans: Union[PlansManager, dict, str]) -> None:
    """Raise :class:`StaleUnlabeledDataError` (message: what is wrong + the command that fixes it) unless
    ``<data_identifier>_unlabeled`` holds every case of a completed run made with exactly these plans.

    ``plans`` may be a PlansManager, a plans dict or a path to the plans json. Returns None when fine.
    """
    pm = _as_plans_manager(plans)
    cm = pm.get_configuration(configuration_name)
    folder = unlabeled_preprocessed_folder(preprocessed_dataset_folder, cm.data_identifier)
    dataset_name = os.path.basename(os.path.normpath(preprocessed_dataset_folder))
    manifest = read_manifest(folder) if os.path.isdir(folder) else None
    raw_name = manifest.get("raw_folder_name", RAW_UNLABELED_FOLDER) if manifest else RAW_UNLABELED_FOLDER
    fix = rerun_command(dataset_name, configuration_name, plans_identifier, raw_name)
    if not os.path.isdir(folder):
        raise StaleUnlabeledDataError(
            f"No preprocessed unlabeled data: {folder} does not exist.\nPut the unlabeled images in "
            f"nnUNet_raw/{dataset_name}/{RAW_UNLABELED_FOLDER}/ and run:\n    {fix.replace(' --overwrite', '')}")
    if manifest is None:
        raise StaleUnlabeledDataError(
            f"{folder} has no {UNLABELED_MANIFEST}, so nobody knows which plans made it. Rebuild it with:\n    {fix}")
    expected = {"plans_identifier": plans_identifier, "configuration": configuration_name,
                "data_identifier": cm.data_identifier, "plans_hash": compute_plans_hash(pm, configuration_name)}
    diffs = manifest_differences(manifest, expected)
    if diffs:
        raise StaleUnlabeledDataError(
            f"The preprocessed unlabeled data in {folder} are stale (made with other plans than the ones used "
            f"now):\n  - " + "\n  - ".join(diffs) + f"\nRebuild them with:\n    {fix}")
    if not manifest.get("complete", False):
        raise StaleUnlabeledDataError(
            f"The preprocessing of {folder} did not finish (interrupted?). Resume it with:\n"
            f"    {fix.replace(' --overwrite', '')}")
    missing = [c for c in manifest.get("case_ids", []) if not case_files_present(folder, c)]
    if missing:
        raise StaleUnlabeledDataError(
            f"{len(missing)} unlabeled case(s) listed in the manifest are missing from {folder} "
            f"(e.g. {missing[:5]}). Rebuild with:\n    {fix.replace(' --overwrite', '')}")
    extra = sorted(set(list_case_ids_in_folder(folder)) - set(manifest.get("case_ids", [])))
    if extra:
        raise StaleUnlabeledDataError(
            f"{folder} holds {len(extra)} case(s) that the manifest does not list (e.g. {extra[:5]}); they were "
            f"not made by the last run. Rebuild with:\n    {fix}")
    if not manifest.get("case_ids"):
        raise StaleUnlabeledDataError(f"The manifest of {folder} lists no cases. Rebuild with:\n    {fix}")
