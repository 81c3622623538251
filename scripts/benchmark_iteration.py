#!/usr/bin/env python
"""Per-iteration cost of nnU-Net trainers side by side: time per ``train_step`` and peak GPU memory.

    python scripts/benchmark_iteration.py -d 27 -c 2d --trainers nnUNetTrainer nnUNetTrainerMONA \
        --iterations 20 --warmup 3 --device cuda

Each trainer is instantiated directly on the same plans (``plans['continue_training'] = False``,
nnunet_integration.md 2.2), initialised, given its dataloaders, then runs ``--warmup`` untimed and
``--iterations`` timed ``train_step`` calls. The labeled batch is fetched outside the timed region;
semi-supervised trainers fetch their unlabeled batch inside ``train_step`` (it is part of their
iteration; the background workers usually have it ready).

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the timed steps. On CPU, a proxy: the
growth of the process's peak resident set (``ru_maxrss``) over the resident set measured after the
trainer was initialised and its loaders started, i.e. what the training steps themselves add
(activations, gradients, optimizer state, teacher, banks). Each trainer runs in its own Python
process (``--in-process`` turns that off), so one trainer's peak cannot hide the next one's.
The first trainer is the reference for the ratios (x time, x memory). With ``torch.compile`` (default on CUDA) keep warm-up >= 3 so compilation is
not timed.
"""
import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join

from nnunet_mona.trainers.ready_trainer import finish_loaders, make_trainer, skip_supervised_warmup, start_loaders


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident_mb() -> float:
    """Current resident set of this process in MiB (Linux /proc; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):
        return float("nan")


def _peak_resident_mb() -> float:
    """Peak resident set of this process so far in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark(trainer_name: str, preprocessed_folder: str, plans_name: str, configuration: str, fold,
              device: torch.device, warmup: int, iterations: int) -> dict:
    trainer = make_trainer(trainer_name, preprocessed_folder, configuration, fold, device, plans_name=plans_name,
                           seed=0)
    skip_supervised_warmup(trainer)  # time the method's step, not its supervised warm-up
    start_loaders(trainer)
    unlabeled = getattr(trainer, "unlabeled_batch_size", None) or 0
    _ = next(trainer.dataloader_train)  # loaders started, their buffers resident
    gc.collect()
    resident_before = _resident_mb()
    times = []
    try:
        for i in range(warmup + iterations):
            batch = next(trainer.dataloader_train)
            if i == warmup and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            start = time.perf_counter()
            trainer.train_step(batch)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" \
            else _peak_resident_mb() - resident_before
    finally:
        finish_loaders(trainer)
    result = {"trainer": trainer_name, "batch": f"{trainer.batch_size}+{unlabeled}",
              "mean_s": float(np.mean(times)), "std_s": float(np.std(times)), "peak_mb": peak}
    del trainer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def benchmark_in_subprocess(trainer_name: str, args) -> dict:
    """Runs this script for one trainer in a fresh interpreter and returns its result dict."""
    cmd = [sys.executable, os.path.abspath(__file__), "-d", args.dataset, "-c", args.configuration, "-p", args.plans,
           "-f", args.fold, "--trainers", trainer_name, "--iterations", str(args.iterations),
           "--warmup", str(args.warmup), "--device", args.device, "--in-process", "--json"]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark of {trainer_name} failed (exit {done.returncode}); command: {' '.join(cmd)}")
    return json.loads(done.stdout.strip().splitlines()[-1])[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("-f", "--fold", default="0")
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainer", "nnUNetTrainerMONA"],
                        help="first one is the reference for the ratios")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu", "mps"])
    parser.add_argument("--in-process", action="store_true",
                        help="run all trainers in this process (default: one fresh process per trainer)")
    parser.add_argument("--json", action="store_true", help="print only the results as one JSON line")
    args = parser.parse_args(argv)
    if args.in_process and args.device != "cuda" and len(args.trainers) > 1:
        # ru_maxrss only grows: a later trainer's peak would hide below an earlier one's
        parser.error("--in-process measures CPU memory for one trainer per process: give one trainer, "
                     "or drop --in-process (the default runs each trainer in its own process)")
    if not args.in_process:
        results = []
        for t in args.trainers:
            print(f"benchmarking {t} ...", flush=True)
            results.append(benchmark_in_subprocess(t, args))
        print_table(results, args)
        return results

    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunet_mona.cli import configure_ext_trainer_in_process
    configure_ext_trainer_in_process()
    dataset_name = maybe_convert_to_dataset_name(args.dataset)
    folder = join(nnUNet_preprocessed, dataset_name)
    fold = args.fold if args.fold == "all" else int(args.fold)
    device = torch.device(args.device)
    results = [benchmark(t, folder, args.plans, args.configuration, fold, device, args.warmup, args.iterations)
               for t in args.trainers]
    for r in results:
        r["dataset"] = dataset_name
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results, args)
    return results


def print_table(results: list, args) -> None:
    ref = results[0]
    print(f"\n{ref.get('dataset', args.dataset)} {args.configuration}, device {args.device}, {args.iterations} timed "
          f"iterations after {args.warmup} warm-up; batch = labeled+unlabeled patches per iteration")
    memory = "peak MiB" if args.device == "cuda" else "+RSS MiB"
    if args.device != "cuda":
        print("(not CUDA: memory is the CPU proxy, growth of the peak resident set during the steps)")
    header = f"{'trainer':<36} {'batch':>7} {'s/iter':>9} {'std':>7} {memory:>9} {'x time':>7} {'x mem':>7}"
    print(header + "\n" + "-" * len(header))
    for r in results:
        print(f"{r['trainer']:<36} {r['batch']:>7} {r['mean_s']:>9.3f} {r['std_s']:>7.3f} {r['peak_mb']:>9.1f} "
              f"{r['mean_s'] / ref['mean_s']:>7.2f} {r['peak_mb'] / ref['peak_mb']:>7.2f}")


if __name__ == "__main__":
    main()
