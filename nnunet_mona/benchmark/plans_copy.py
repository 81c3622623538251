"""``nnUNetv2_mona_benchmark --batch_size B``: a copy of the plans whose configuration trains with batch size B.

The copy ``<plans>_bs<B>.json`` keeps the configuration's ``data_identifier``, so it reads the preprocessed arrays of
the original plans (nothing is preprocessed again); only the batch size differs. It is written into the benchmark's
own per-N ``nnUNet_preprocessed`` folder, never into the user's. Trainings made with it get their own nnU-Net results
folder (``T__<plans>_bs<B>__2d``), as for any plans.

A preprocessed unlabeled folder (``<data_identifier>_unlabeled``, ``nnUNetv2_mona_preprocess_unlabeled``) records the
plans that made it; the semi-supervised trainers refuse it for other plans. For the copy, the benchmark checks that the
folder is current for the original plans and then links its files into a folder whose manifest names the copy (the
batch size does not change a preprocessed array).
"""
import copy
import json
import os
from typing import Optional

from nnunet_mona.benchmark.processes import BenchmarkError
from nnunet_mona.benchmark.evaluate import save_json


def batch_plans_name(plans: str, batch_size: int) -> str:
    """Plans identifier of the copy: ``nnUNetPlans`` -> ``nnUNetPlans_bs8``."""
    return f"{plans}_bs{batch_size}"


def check_batch_size(batch_size: Optional[int]) -> None:
    """nnU-Net never plans a batch below 2; the semi-supervised trainers split the batch in a labeled and an
    unlabeled part."""
    if batch_size is not None and batch_size < 2:
        raise BenchmarkError(f"--batch_size must be at least 2 (nnU-Net plans no batch below 2, and the "
                             f"semi-supervised trainers split it into labeled + unlabeled patches), got {batch_size}")


def make_batch_plans(plans: dict, configuration: str, batch_size: int, plans_name: str) -> dict:
    """A deep copy of the plans dict with ``configuration``'s batch size set and its data identifier pinned to the
    original one (resolved through nnU-Net's configuration inheritance)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    if configuration not in plans["configurations"]:
        raise BenchmarkError(f"Configuration {configuration!r} is not in the plans ({list(plans['configurations'])})")
    identifier = PlansManager(copy.deepcopy(plans)).get_configuration(configuration).data_identifier
    new = copy.deepcopy(plans)
    new["plans_name"] = plans_name
    new["configurations"][configuration]["batch_size"] = int(batch_size)
    new["configurations"][configuration]["data_identifier"] = identifier
    return new


def _write_json(obj, path: str) -> None:
    if os.path.islink(path):
        os.remove(path)
    save_json(obj, path)


def install_batch_plans(target: str, source_plans_file: str, configuration: str, batch_size: int,
                        plans_name: str) -> dict:
    """Write ``target/<plans_name>.json`` from ``source_plans_file``; returns the new plans dict."""
    with open(source_plans_file) as f:
        plans = make_batch_plans(json.load(f), configuration, batch_size, plans_name)
    _write_json(plans, os.path.join(target, plans_name + ".json"))
    return plans


def install_unlabeled_for_copy(shared: str, target: str, source_plans: str, plans_name: str, configuration: str,
                               new_plans: dict) -> Optional[str]:
    """If ``shared`` has ``<data_identifier>_unlabeled``: check it is current for ``source_plans`` and make
    ``target/<data_identifier>_unlabeled``, links to its arrays plus a manifest for the copy. Returns that folder or
    None when there is no unlabeled folder."""
    from nnunet_mona.data._prep_manifest import (UnlabeledDataError, check_unlabeled_folder_is_current,
                                                 compute_plans_hash, read_manifest, write_manifest)
    from nnunet_mona.data.paths import UNLABELED_MANIFEST, unlabeled_preprocessed_folder
    identifier = new_plans["configurations"][configuration]["data_identifier"]
    source = unlabeled_preprocessed_folder(shared, identifier)
    if not os.path.isdir(source):
        return None
    try:
        check_unlabeled_folder_is_current(shared, source_plans, configuration,
                                          os.path.join(shared, source_plans + ".json"))
    except UnlabeledDataError as e:
        raise BenchmarkError(str(e)) from None
    folder = unlabeled_preprocessed_folder(target, identifier)
    if os.path.islink(folder):
        os.remove(folder)
    os.makedirs(folder, exist_ok=True)
    for entry in sorted(os.listdir(source)):
        if entry == UNLABELED_MANIFEST:
            continue
        link = os.path.join(folder, entry)
        if not os.path.islink(link):
            os.symlink(os.path.join(source, entry), link)
    manifest = dict(read_manifest(source), plans_identifier=plans_name,
                    plans_hash=compute_plans_hash(copy.deepcopy(new_plans), configuration))
    write_manifest(folder, manifest)
    return folder
