#!/usr/bin/env python
"""CPU cost of nnU-Net's data augmentation per training iteration, measured on one core.

    python scripts/device/da_cost.py -d 27 --trainers nnUNetTrainer nnUNetTrainerMeanTeacher --batches 4 --json

For each trainer: instantiate it on the CPU (plans and split of fold 0, as scripts/benchmark_iteration.py
does), build its loaders with ``nnUNet_n_proc_DA=0`` (in-process, one torch thread) and time ``--batches``
labeled batches after one untimed batch; semi-supervised trainers also draw their unlabeled batch (weak +
strong views) each iteration. The result, ``da_core_s`` (seconds of one core per iteration), divided by the
number of augmentation workers is the fastest a training can iterate when the augmentation, not the GPU, is
the limit: the device script uses it to choose ``nnUNet_n_proc_DA`` and the budget
(scripts/device/size_budget.py). Prints one JSON line with ``--json``.
"""
import argparse
import json
import os
import time

os.environ["nnUNet_n_proc_DA"] = "0"  # before nnU-Net reads it: single-threaded augmenters in this process

import torch  # noqa: E402

from nnunet_mona.trainers.ready_trainer import finish_loaders, make_trainer, start_loaders  # noqa: E402


def measure(trainer_name: str, preprocessed_folder: str, plans_name: str, batches: int) -> dict:
    trainer = make_trainer(trainer_name, preprocessed_folder, fold=0, plans_name=plans_name)
    start_loaders(trainer)
    unlabeled = getattr(trainer, "dataloader_unlabeled", None)
    try:
        times = []
        for i in range(batches + 1):
            start = time.perf_counter()
            next(trainer.dataloader_train)
            if unlabeled is not None:
                next(unlabeled)
            if i:  # the first batch is untimed (caches, lazy imports)
                times.append(time.perf_counter() - start)
    finally:
        finish_loaders(trainer)
    return {"trainer": trainer_name, "da_core_s": sum(times) / len(times), "batches": batches,
            "batch": f"{trainer.batch_size}+{getattr(trainer, 'unlabeled_batch_size', None) or 0}"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name (preprocessed, 2d)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainer", "nnUNetTrainerMeanTeacher"])
    parser.add_argument("--batches", type=int, default=4, help="timed iterations per trainer (default 4)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunet_mona.cli import configure_ext_trainer_in_process
    configure_ext_trainer_in_process()
    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(args.dataset))
    results = [measure(t, folder, args.plans, args.batches) for t in args.trainers]
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['trainer']:<32} batch {r['batch']:>7}  {r['da_core_s']:.3f} core-s per iteration")
    return results


if __name__ == "__main__":
    main()
