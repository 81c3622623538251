"""``python -m nnunet_mona.benchmark.train_and_measure``: ``nnUNetv2_train`` plus a JSON record of what it cost.

Same arguments and the same code path as
``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -device D [--c] [-pretrained_weights CHECKPOINT]``
(nnU-Net's own trainer lookup and ``run_training``, in this process), then writes ``--record``:

* ``peak_gpu_memory_bytes``: ``torch.cuda.max_memory_allocated()`` over the training and nnU-Net's final
  validation (``None`` on CPU; only the last segment when a killed training was continued with ``--c``);
* wall time, device name, and the epoch timing from the checkpoint's logger (see :func:`epoch_timing`).
"""
import argparse
import multiprocessing
import os
import socket
import time
from typing import Optional

import torch

from nnunet_mona.benchmark.evaluate import save_json


def epoch_timing(checkpoint_file: str, iterations_per_epoch: Optional[int]) -> dict:
    """Epoch durations from nnU-Net's logger in a checkpoint (``epoch_end_timestamps - epoch_start_timestamps``).

    ``seconds_per_iteration`` = mean epoch time / training iterations per epoch; an epoch's time includes its
    validation iterations and nnU-Net's end-of-epoch bookkeeping, so this slightly overstates the pure step time.
    """
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    logging = checkpoint.get("logging", {})
    starts, ends = logging.get("epoch_start_timestamps", []), logging.get("epoch_end_timestamps", [])
    durations = [float(e) - float(s) for s, e in zip(starts, ends)]
    mean_epoch = sum(durations) / len(durations) if durations else None
    return {
        "trainer_name": checkpoint.get("trainer_name"),
        "epochs_completed": int(checkpoint.get("current_epoch", len(durations))),
        "mean_epoch_seconds": mean_epoch,
        "median_epoch_seconds": float(sorted(durations)[len(durations) // 2]) if durations else None,
        "seconds_per_iteration": (mean_epoch / iterations_per_epoch) if mean_epoch and iterations_per_epoch else None,
    }


def _device(name: str) -> torch.device:
    # as nnUNetv2_train does
    if name == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
        return torch.device("cpu")
    if name == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        return torch.device("cuda")
    return torch.device(name)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nnunet_mona.benchmark.train_and_measure",
        description="nnUNetv2_train (same code path) that also writes peak GPU memory, wall time and epoch timing "
                    "to a JSON record.")
    parser.add_argument("dataset_name_or_id", help="dataset name or id")
    parser.add_argument("configuration", help="configuration, e.g. 2d")
    parser.add_argument("fold", help="fold (an integer or 'all')")
    parser.add_argument("-tr", default="nnUNetTrainer", help="trainer class name. Default: nnUNetTrainer")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    parser.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"], help="device. Default: cuda")
    parser.add_argument("--c", action="store_true", help="continue from checkpoint_latest.pth")
    parser.add_argument("-pretrained_weights", default=None,
                        help="checkpoint to initialise the network with, as nnUNetv2_train -pretrained_weights "
                             "(a new training only, not with --c)")
    parser.add_argument("--record", required=True, help="JSON file to write after the training finished")
    parser.add_argument("--iterations_per_epoch", type=int, default=None,
                        help="training iterations per epoch (for seconds per iteration). Default: from "
                             "nnUNet_mona_iterations, else nnU-Net's 250")
    args = parser.parse_args(argv)

    from nnunetv2.run.run_training import run_training
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    device = _device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    run_training(args.dataset_name_or_id, args.configuration, args.fold, args.tr, args.p,
                 pretrained_weights=args.pretrained_weights, continue_training=args.c, device=device)
    wall = time.time() - start
    fold_folder = os.path.join(str(nnUNet_results), maybe_convert_to_dataset_name(args.dataset_name_or_id),
                               f"{args.tr}__{args.p}__{args.configuration}",
                               f"fold_{args.fold}" if args.fold != "all" else "fold_all")
    iterations = args.iterations_per_epoch or int(os.environ.get("nnUNet_mona_iterations") or 250)
    record = {
        "trainer": args.tr, "dataset": args.dataset_name_or_id, "configuration": args.configuration,
        "fold": args.fold, "continued": args.c,
        "pretrained_weights": args.pretrained_weights, "wall_seconds_this_segment": round(wall, 1),
        "device": args.device, "host": socket.gethostname(),
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "peak_gpu_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        "peak_gpu_memory_reserved_bytes":
            int(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else None,
        "torch_version": torch.__version__, "iterations_per_epoch": iterations,
        "fold_folder": fold_folder,
        **epoch_timing(os.path.join(fold_folder, "checkpoint_final.pth"), iterations),
    }
    save_json(record, args.record)


if __name__ == "__main__":
    main()
