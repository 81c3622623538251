"""``nnUNetv2_mona_preprocess_unlabeled``: preprocess images without labels with a dataset's existing plans.

Input:  ``nnUNet_raw/DatasetXXX/imagesUnlabeled/<case>_<XXXX><file_ending>`` (same channel naming and file
        ending as imagesTr, per dataset.json).
Output: ``nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/`` (a sibling of the labeled folder,
        never inside it) with, per case, ``<id>.b2nd`` (float32 image, exactly as nnU-Net stores labeled
        cases), ``<id>_seg.b2nd`` (int16 0/-1 nonzero mask made by ``crop_to_nonzero``) and ``<id>.pkl``
        (nnU-Net's properties plus ``class_locations = {}`` and ``is_unlabeled = True``), and a manifest
        (:data:`nnunet_mona.data.paths.UNLABELED_MANIFEST`) recording the plans that made it.

The fingerprint and plans are computed from the labeled cases only; unlabeled images are normalised with
those statistics, exactly like test images. Re-run this command after every re-plan
(:func:`check_unlabeled_folder_is_current` tells the trainer when the folder is stale).
"""
import multiprocessing
import os
import shutil
from time import sleep
from typing import List

import numpy as np
from tqdm import tqdm
from nnunetv2.configuration import default_num_processes
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2, comp_blosc2_params
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mona.data._prep_inputs import (check_images_readable, check_no_collisions, collect_unlabeled_cases,
                                           labeled_training_case_ids, num_channels_of, resolve_planned_dataset)
from nnunet_mona.data._prep_manifest import (StaleUnlabeledDataError, UnlabeledDataError, build_manifest,
                                             case_files_present, check_unlabeled_folder_is_current,
                                             list_case_ids_in_folder, manifest_differences, read_manifest,
                                             rerun_command, write_manifest)
from nnunet_mona.data.paths import RAW_UNLABELED_FOLDER, UNLABELED_MANIFEST, unlabeled_preprocessed_folder
from nnunet_mona.cli.arguments import command_parser, run_command

__all__ = ["preprocess_unlabeled", "preprocess_unlabeled_case", "check_unlabeled_folder_is_current",
           "UnlabeledDataError", "StaleUnlabeledDataError", "entry_point"]


def preprocess_unlabeled_case(output_filename_truncated: str, image_files: List[str], plans: dict,
                              configuration_name: str, dataset_json: dict, verbose: bool = False) -> None:
    """Preprocess one unlabeled case with the configuration's preprocessor and save it like nnU-Net saves a
    labeled case (``DefaultPreprocessor.run_case_save``: same dtypes, same Blosc2 chunk/block parameters).

    Runs in a spawned worker, hence plain picklable arguments. Errors name the case and its files.
    """
    try:
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration_name)
        preprocessor = configuration_manager.preprocessor_class(verbose=verbose)
        data, seg, properties = preprocessor.run_case(image_files, None, plans_manager, configuration_manager,
                                                      dataset_json)
        properties["class_locations"] = {}  # nnUNetDataLoader indexes it unconditionally; no labels, no locations
        properties["is_unlabeled"] = True
        data = data.astype(np.float32, copy=False)
        seg = seg.astype(np.int16, copy=False)
        patch_size = tuple(configuration_manager.patch_size)
        block_size_data, chunk_size_data = comp_blosc2_params(data.shape, patch_size, data.itemsize)
        block_size_seg, chunk_size_seg = comp_blosc2_params(seg.shape, patch_size, seg.itemsize)
        for suffix in (".pkl", ".b2nd", "_seg.b2nd"):  # leftovers of an interrupted run: blosc2 will not overwrite
            if os.path.isfile(output_filename_truncated + suffix):
                os.remove(output_filename_truncated + suffix)
        nnUNetDatasetBlosc2.save_case(data, seg, properties, output_filename_truncated,
                                      chunks=chunk_size_data, blocks=block_size_data,
                                      chunks_seg=chunk_size_seg, blocks_seg=block_size_seg)
    except Exception as e:
        raise RuntimeError(f"Preprocessing unlabeled case {os.path.basename(output_filename_truncated)} "
                           f"({image_files}) failed: {e!r}") from e


def _run_in_pool(jobs: List[tuple], num_processes: int, show_progress_bar: bool) -> None:
    """nnU-Net's pattern (DefaultPreprocessor.run): a 'spawn' pool, a progress bar, and a check that no
    worker died silently (e.g. killed for lack of RAM), which would otherwise hang forever."""
    if num_processes == 0:  # in-process, handy for debugging
        for job in tqdm(jobs, desc="Preprocessing unlabeled cases", disable=not show_progress_bar):
            preprocess_unlabeled_case(*job)
        return
    with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
        workers = list(pool._pool)
        results = [pool.starmap_async(preprocess_unlabeled_case, (job,)) for job in jobs]
        remaining = list(range(len(jobs)))
        with tqdm(desc="Preprocessing unlabeled cases", total=len(jobs), disable=not show_progress_bar) as pbar:
            while remaining:
                if not all(w.is_alive() for w in workers):
                    raise RuntimeError("A background worker died (out of RAM?). Look for an error message above; "
                                       "re-running resumes where it stopped; fewer workers (-np) use less RAM.")
                done = [i for i in remaining if results[i].ready()]
                for i in done:
                    results[i].get()  # re-raises a worker's error
                    pbar.update()
                remaining = [i for i in remaining if i not in done]
                sleep(0.1)


def _check_existing_output(output_folder: str, expected_manifest: dict, case_ids: List[str], fix: str) -> None:
    """Without --overwrite, an existing output folder may only be resumed/extended, never silently replaced."""
    manifest = read_manifest(output_folder)
    present = [f for f in os.listdir(output_folder) if f != UNLABELED_MANIFEST]
    if manifest is None:
        if present:
            raise UnlabeledDataError(
                f"{output_folder} already holds {len(present)} file(s) but no {UNLABELED_MANIFEST}, so it is unknown "
                f"which plans made them. Nothing was changed. To rebuild it run:\n    {fix}")
        return
    diffs = manifest_differences(manifest, expected_manifest)
    for k in ("file_ending", "num_channels"):
        if manifest.get(k) != expected_manifest[k]:
            diffs.append(f"{k}: folder has {manifest.get(k)!r}, now {expected_manifest[k]!r}")
    if diffs:
        raise UnlabeledDataError(
            f"{output_folder} was made with other plans/settings than requested:\n  - " + "\n  - ".join(diffs) +
            f"\nNothing was changed. To delete and rebuild it run:\n    {fix}")
    orphans = sorted(set(list_case_ids_in_folder(output_folder)) - set(case_ids))
    if orphans:
        raise UnlabeledDataError(
            f"{output_folder} holds {len(orphans)} case(s) that are no longer in the raw unlabeled folder "
            f"(e.g. {orphans[:5]}); the trainer would still use them. Nothing was changed. To rebuild run:\n"
            f"    {fix}")


def preprocess_unlabeled(dataset_name_or_id, configuration: str = "2d", plans_identifier: str = "nnUNetPlans",
                         num_processes: int = default_num_processes, raw_folder_name: str = RAW_UNLABELED_FOLDER,
                         overwrite: bool = False, verbose: bool = False, show_progress_bar: bool = True) -> List[str]:
    """Preprocess ``nnUNet_raw/<dataset>/<raw_folder_name>`` with the dataset's existing plans into
    ``<data_identifier>_unlabeled``. Returns the sorted ids of all unlabeled cases in that folder.

    All input checks (dataset planned and preprocessed, folder present and non-empty, file ending, channels,
    id collisions with labeled cases, readability, compatibility of an existing output folder) run before
    anything is written. Cases already done by a run with the same plans are skipped unless ``overwrite``;
    ``overwrite`` deletes and rebuilds the unlabeled folder (and only that folder). ``num_processes=0``
    runs in this process (debugging).
    """
    ds = resolve_planned_dataset(dataset_name_or_id, configuration, plans_identifier)
    dataset_name, dataset_json = ds["dataset_name"], ds["dataset_json"]
    plans_manager, configuration_manager = ds["plans_manager"], ds["configuration_manager"]
    file_ending, num_channels = dataset_json["file_ending"], num_channels_of(dataset_json)
    raw_folder = os.path.join(ds["raw_dataset_folder"], raw_folder_name)

    cases = collect_unlabeled_cases(raw_folder, file_ending, num_channels)
    check_no_collisions(cases.keys(), labeled_training_case_ids(ds["raw_dataset_folder"], dataset_json,
                                                                ds["labeled_folder"]), raw_folder)
    check_images_readable(cases, plans_manager.image_reader_writer_class)

    output_folder = unlabeled_preprocessed_folder(ds["preprocessed_dataset_folder"],
                                                  configuration_manager.data_identifier)
    assert os.path.abspath(output_folder) != os.path.abspath(ds["labeled_folder"])
    case_ids = sorted(cases.keys())
    manifest = build_manifest(dataset_name, plans_manager, plans_identifier, configuration, file_ending,
                              num_channels, case_ids, raw_folder_name, complete=False)
    fix = rerun_command(dataset_name, configuration, plans_identifier, raw_folder_name, overwrite=True)
    if os.path.isdir(output_folder) and not overwrite:
        _check_existing_output(output_folder, manifest, case_ids, fix)
    # --- all checks passed: from here on we write, and only into output_folder ---
    if overwrite and os.path.isdir(output_folder):
        shutil.rmtree(output_folder)
    os.makedirs(output_folder, exist_ok=True)
    write_manifest(output_folder, manifest)  # 'complete': False until every case is saved -> resumable

    todo = [c for c in case_ids if not case_files_present(output_folder, c)]
    print(f"{dataset_name} {configuration} ({plans_identifier}): {len(case_ids)} unlabeled case(s) in {raw_folder}, "
          f"{len(case_ids) - len(todo)} already done, {len(todo)} to preprocess -> {output_folder}")
    jobs = [(os.path.join(output_folder, c), cases[c], plans_manager.plans, configuration, dataset_json, verbose)
            for c in todo]
    _run_in_pool(jobs, num_processes, show_progress_bar)

    manifest["complete"] = True
    write_manifest(output_folder, manifest)
    check_unlabeled_folder_is_current(ds["preprocessed_dataset_folder"], plans_identifier, configuration,
                                      plans_manager)
    print(f"Done: {len(case_ids)} unlabeled case(s) in {output_folder}")
    return case_ids


def entry_point(argv=None) -> None:
    parser = command_parser(
        "nnUNetv2_mona_preprocess_unlabeled",
        "Preprocess unlabeled images (nnUNet_raw/DatasetXXX/imagesUnlabeled, named like imagesTr) "
                    "with the dataset's EXISTING plans into nnUNet_preprocessed/DatasetXXX/<data_identifier>"
                    "_unlabeled. Run nnUNetv2_plan_and_preprocess first, and re-run this after every re-plan.")
    parser.add_argument("-d", type=str, required=True, help="dataset name or id, e.g. 27 or Dataset027_ACDC")
    parser.add_argument("-c", type=str, default="2d",
                        help="configuration whose plans are used (must be preprocessed already). Default: 2d")
    parser.add_argument("-p", type=str, default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    parser.add_argument("-np", type=int, default=default_num_processes,
                        help=f"number of worker processes ('spawn' pool; 0 = run in this process). "
                             f"Default: {default_num_processes} (nnU-Net's default, env nnUNet_def_n_proc)")
    parser.add_argument("-i", type=str, default=RAW_UNLABELED_FOLDER,
                        help=f"name of the folder inside nnUNet_raw/DatasetXXX that holds the unlabeled images. "
                             f"Default: {RAW_UNLABELED_FOLDER}")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the unlabeled preprocessed folder (only that one) and preprocess every case "
                             "again; needed when it was made with other plans. Default: resume, skip done cases")
    parser.add_argument("--verbose", action="store_true", help="print nnU-Net's per-case preprocessing details")
    parser.add_argument("--no_pbar", action="store_true", help="do not show a progress bar")
    args = parser.parse_args(argv)
    if args.np < 0:
        parser.error("-np must be >= 0")
    run_command(lambda: preprocess_unlabeled(args.d, args.c, args.p, args.np, args.i, args.overwrite, args.verbose,
                                             show_progress_bar=not args.no_pbar), (UnlabeledDataError,))


if __name__ == "__main__":
    entry_point()
