"""``nnUNetv2_mona_scaling``: Dice against the training budget, plain nnU-Net vs the semi-supervised recipes.

For each total-iteration budget B (largest first) it runs ``nnUNetv2_mona_benchmark`` with B / I epochs in
``OUTPUT/seed_<S>/budget_<B>`` (rows and folders: :mod:`nnunet_mona.benchmark.scaling_plan`), then writes
``OUTPUT/scaling.json`` / ``scaling.md`` / ``scaling.png`` (:mod:`nnunet_mona.benchmark.scaling_report`) from every
budget folder. Every step resumes as the benchmark's do (finished trainings, predictions and evaluations are skipped;
an interrupted training continues from ``checkpoint_latest.pth``, written every ``--checkpoint_every`` iterations).

``OUTPUT/scaling_protocol.json`` keeps the settings every budget shares (dataset, iterations per epoch, batch size,
evaluation set, ...); a re-run with other budgets, rows, labeled counts or seeds extends the same table, a re-run
with another protocol is refused with the differences named.
"""
import argparse
import os
import subprocess
import sys
import time
from typing import List

from nnunet_mona.benchmark import preparation as prep
from nnunet_mona.benchmark.evaluate import save_json
from nnunet_mona.cli.arguments import argv_or_sys, command_parser, run_command
from nnunet_mona.benchmark.presets import PRESETS, apply_preset
from nnunet_mona.benchmark.processes import BenchmarkError, say
from nnunet_mona.benchmark.scaling_plan import (CEILING, DEFAULT_ROWS, KEYWORDS, check_budgets, check_rows,
                                                invocations, trainer_rows)
from nnunet_mona.benchmark.scaling_preview import measured_rates, plan_cells, preview_lines
from nnunet_mona.benchmark.scaling_report import budget_folder, collect, figure, markdown

STAMP = "scaling_protocol.json"
# settings every budget folder of one scaling folder must share (the budget, rows, counts and seeds may grow)
SHARED_SETTINGS = ("dataset_name", "preset", "iterations_per_epoch", "batch_size", "val_iterations", "disable_tta",
                   "fold", "configuration", "plans", "test_images", "test_labels", "splits_pattern",
                   "ceiling_labeled")
GROWING = ("budgets", "rows", "labeled", "seeds")
# options passed on to every benchmark call as given (None: the benchmark's default or the preset's)
PASSED_ON = (("--batch_size", "batch_size"), ("--val_iterations", "val_iterations"), ("--device", "device"),
             ("--test_images", "test_images"), ("--test_labels", "test_labels"),
             ("--splits_pattern", "splits_pattern"), ("--np", "np"), ("--parallel", "parallel"), ("--fold", "fold"),
             ("-c", "c"), ("-p", "p"))


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "nnUNetv2_mona_scaling",
        "Train and score plain nnU-Net, offline self-training, the semi-supervised trainers and the "
                    "full-supervision ceiling at several total-iteration budgets on one split and evaluation set; "
                    "writes scaling.md / scaling.json / scaling.png (Dice against iterations). Re-running resumes.")
    parser.add_argument("-d", default=None, help="dataset name or id; required unless --preset gives it")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="a benchmark protocol (see nnUNetv2_mona_benchmark -h) that fills the options not given "
                             "here; its epochs and trainers are replaced by --budgets and --rows")
    parser.add_argument("--budgets", type=int, nargs="+", default=None,
                        help="total training iterations per row, e.g. 1000 2000 4000 8000; each a whole number of "
                             "epochs (a multiple of --iterations). Required unless --report_only")
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing: write scaling.md / .json / .png from what the folder -o holds (e.g. while "
                             "its trainings still run)")
    parser.add_argument("--dry_run", action="store_true",
                        help="train nothing: check the options, then list every cell of the command (done, "
                             "interrupted, to train) with the time left at the rates this folder measured")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations per epoch. Default: the preset's, else nnU-Net's 250")
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS),
                        help=f"rows: {', '.join(KEYWORDS)} (plain nnU-Net, offline self-training whose two "
                             "trainings share the budget, plain nnU-Net with --ceiling_labeled patients labeled) or "
                             f"trainer class names. Default: {' '.join(DEFAULT_ROWS)}")
    parser.add_argument("--labeled", type=int, nargs="+", default=None,
                        help="labeled patient counts N (each needs its split file). Default: the preset's, else 3")
    parser.add_argument("--ceiling_labeled", type=int, default=None,
                        help="labeled count of the ceiling row: every training patient, with its split file "
                             "(ACDC: convert with --labeled_patients 1 3 70, then 70). Required with the ceiling row")
    parser.add_argument("--seed", type=int, default=None,
                        help="training seed (each seed has its own folder seed_<S>; the table averages the seeds "
                             "measured). Default: the preset's, else unseeded")
    parser.add_argument("--checkpoint_every", type=int, default=500,
                        help="write checkpoint_latest.pth about every this many iterations, so that a stopped run "
                             "loses at most that much. Default: 500")
    parser.add_argument("-o", required=True, help="output folder (one per protocol; budget folders inside)")
    parser.add_argument("--batch_size", type=int, default=None, help="patch batch size (a plans copy)")
    parser.add_argument("--val_iterations", type=int, default=None, help="validation iterations per epoch")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="training and inference device")
    parser.add_argument("--disable_tta", action=argparse.BooleanOptionalAction, default=None,
                        help="predict without mirroring")
    parser.add_argument("--test_images", default=None, help="evaluation images (see nnUNetv2_mona_benchmark)")
    parser.add_argument("--test_labels", default=None, help="evaluation labels (see nnUNetv2_mona_benchmark)")
    parser.add_argument("--splits_pattern", default=None, help="split file per N (see nnUNetv2_mona_benchmark)")
    parser.add_argument("--np", type=int, default=None, help="processes for preprocessing and prediction")
    parser.add_argument("--parallel", type=int, default=None, help="rows of one benchmark call at once")
    parser.add_argument("--fold", type=int, default=None, help="fold of the split files. Default: 0")
    parser.add_argument("-c", default=None, help="nnU-Net configuration. Default: 2d")
    parser.add_argument("-p", default=None, help="plans identifier. Default: nnUNetPlans")
    return parser


def _resolved(args) -> argparse.Namespace:
    """The benchmark's view of the options: preset and defaults applied (as the benchmark itself will)."""
    view = argparse.Namespace(preset=args.preset, d=args.d, labeled=args.labeled, trainers=["x"], epochs=1,
                              iterations=args.iterations, val_iterations=args.val_iterations, device=args.device,
                              disable_tta=args.disable_tta, seed=args.seed, batch_size=args.batch_size)
    apply_preset(view)
    if view.iterations is None:
        view.iterations = 250
    if args.labeled is None and args.preset is None:
        view.labeled = [3]
    return view


def _check_trainer_rows(rows: List[str], budgets: List[int], iterations: int) -> None:
    """Unknown trainers and warm-up fractions that do not fit a budget: errors before any training."""
    trainers = trainer_rows(rows)
    prep.check_trainers(trainers)
    for b in budgets:
        try:
            prep.check_warmups(trainers, b // iterations)
        except BenchmarkError as e:
            raise BenchmarkError(f"budget {b} ({b // iterations} epochs): {e}") from None


def _check_splits(raw_folder: str, pattern: str, counts: List[int]) -> None:
    missing = [pattern.format(n=n) for n in counts if not os.path.isfile(os.path.join(raw_folder, pattern.format(n=n)))]
    if missing:
        raise BenchmarkError(f"split file(s) {missing} missing in {raw_folder}; the ACDC converters write "
                             f"splits_final_<N>labeled.json for --labeled_patients N ...")


def _stamp(args, view, dataset_name: str, budgets: List[int], rows: List[str]) -> dict:
    dataset_name = str(dataset_name)
    return {"dataset_name": dataset_name, "preset": args.preset,
            "iterations_per_epoch": view.iterations, "batch_size": view.batch_size,
            "val_iterations": view.val_iterations, "disable_tta": bool(view.disable_tta),
            "fold": args.fold or 0, "configuration": args.c or "2d", "plans": args.p or "nnUNetPlans",
            "test_images": args.test_images or "imagesTs", "test_labels": args.test_labels or "labelsTs",
            "splits_pattern": args.splits_pattern or "splits_final_{n}labeled.json",
            "ceiling_labeled": args.ceiling_labeled,
            "budgets": budgets, "rows": rows, "labeled": list(view.labeled), "seeds": [view.seed],
            "evaluation": f"{args.test_images or 'imagesTs'} / {args.test_labels or 'labelsTs'}"}


def merge_stamp(output: str, new: dict) -> dict:
    """The folder's stamp extended by ``new`` (budgets, rows, counts and seeds joined); refused with the
    differences named when a shared setting differs."""
    path = os.path.join(output, STAMP)
    if not os.path.isfile(path):
        return new
    import json
    with open(path) as f:
        old = json.load(f)
    diffs = [f"{k}: {old.get(k)!r} there, {new[k]!r} now" for k in SHARED_SETTINGS if old.get(k) != new[k]]
    if diffs:
        raise BenchmarkError(f"{output} holds a scaling run with another protocol ({path}):\n  - " +
                             "\n  - ".join(diffs) + "\nUse another output folder (-o), or the same settings to "
                             "extend it.")
    merged = dict(old)
    for k in GROWING:
        merged[k] = list(old[k]) + [v for v in new[k] if v not in old[k]]
    merged["benchmark_options"] = new["benchmark_options"]
    merged["commands"] = list(old.get("commands", [])) + [c for c in new["commands"] if c not in old.get("commands", [])]
    return merged


def benchmark_command(args, view, call, folder: str) -> List[str]:
    cmd = [sys.executable, "-m", "nnunet_mona.benchmark.run_benchmark", "--labeled", *map(str, call.labeled),
           "--trainers", *call.trainers, "--epochs", str(call.folder_budget // view.iterations),
           "--iterations", str(view.iterations), "-o", folder]
    if args.d is not None:
        cmd += ["-d", args.d]
    if args.preset is not None:
        cmd += ["--preset", args.preset]
    if view.seed is not None:
        cmd += ["--seed", str(view.seed)]
    for flag, name in PASSED_ON:
        if getattr(args, name) is not None:
            cmd += [flag, str(getattr(args, name))]
    if args.disable_tta is not None:
        cmd.append("--disable_tta" if args.disable_tta else "--no-disable_tta")
    return cmd


def write_report(output: str, stamp: dict) -> None:
    report = collect(output, stamp)
    save_json(report, os.path.join(output, "scaling.json"))
    with open(os.path.join(output, "scaling.md"), "w") as f:
        f.write(markdown(report))
    figure(report, os.path.join(output, "scaling.png"))


def report_only(output: str) -> int:
    path = os.path.join(output, STAMP)
    if not os.path.isfile(path):
        raise BenchmarkError(f"{output} holds no scaling run ({STAMP} missing); run nnUNetv2_mona_scaling with "
                             f"--budgets first")
    import json
    with open(path) as f:
        write_report(output, json.load(f))
    say(f"scaling table: {os.path.join(output, 'scaling.md')} (and scaling.json, scaling.png); nothing trained")
    return 0


def run(args, argv: List[str]) -> int:
    start = time.time()
    if args.report_only:
        return report_only(os.path.abspath(args.o))
    if args.budgets is None:
        raise BenchmarkError("--budgets is required (total training iterations per row, e.g. 1000 2000 4000 8000)")
    view = _resolved(args)
    if view.d is None:
        raise BenchmarkError("-d (the dataset) is required unless --preset gives it")
    if args.checkpoint_every < 1:
        raise BenchmarkError("--checkpoint_every must be >= 1")
    budgets = check_budgets(args.budgets, view.iterations)
    rows = check_rows(args.rows)
    if CEILING in rows and args.ceiling_labeled is None:
        raise BenchmarkError("the ceiling row needs --ceiling_labeled (every training patient labeled, e.g. 70 for "
                             "ACDC) or drop 'ceiling' from --rows")
    dataset_name, raw_folder, _ = prep.resolve_dataset(view.d)
    pattern = args.splits_pattern or "splits_final_{n}labeled.json"
    _check_splits(raw_folder, pattern, list(view.labeled) + ([args.ceiling_labeled] if CEILING in rows else []))
    _check_trainer_rows(rows, budgets, view.iterations)
    output = os.path.abspath(args.o)
    options = list(argv)
    stamp = _stamp(args, view, dataset_name, budgets, rows)
    stamp.update(benchmark_options=options, commands=["nnUNetv2_mona_scaling " + " ".join(options)])
    stamp = merge_stamp(output, stamp)
    calls = invocations(budgets, rows, view.labeled, args.ceiling_labeled, view.iterations)
    if args.dry_run:
        for line in preview_lines(output, plan_cells(output, view.seed, calls),
                                  measured_rates(output)):
            say(line)
        return 0
    os.makedirs(output, exist_ok=True)
    save_json(stamp, os.path.join(output, STAMP))

    env = dict(os.environ, nnUNet_mona_save_every=str(max(1, round(args.checkpoint_every / view.iterations))))
    failed = []
    for i, call in enumerate(calls, 1):
        folder = budget_folder(output, view.seed, call.folder_budget)
        say(f"[scaling {i}/{len(calls)}] budget folder {call.folder_budget} ({call.folder_budget // view.iterations} "
            f"epochs x {view.iterations}): N = {list(call.labeled)} x {list(call.trainers)}")
        code = subprocess.run(benchmark_command(args, view, call, folder), env=env).returncode
        if code != 0:
            failed.append(f"budget folder {call.folder_budget}: {list(call.trainers)} on N = {list(call.labeled)}")
            say(f"[scaling {i}/{len(calls)}] the benchmark call failed (exit {code}); going on with the others")
    # the folder's stamp as it is now: another scaling call into this folder may have added budgets or rows meanwhile
    write_report(output, merge_stamp(output, stamp))
    say(f"scaling table: {os.path.join(output, 'scaling.md')} (and scaling.json, scaling.png); "
        f"{round(time.time() - start)} s")
    if failed:
        say(f"{len(failed)} benchmark call(s) failed: {failed}; re-run the same command to retry them")
        return 1
    return 0


def entry_point(argv=None) -> None:
    argv = argv_or_sys(argv)
    args = build_parser().parse_args(argv)
    run_command(lambda: run(args, argv), (BenchmarkError,))


if __name__ == "__main__":
    entry_point()
