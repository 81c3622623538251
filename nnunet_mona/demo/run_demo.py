"""``nnUNetv2_mona_demo``: plain nnU-Net vs. Mean Teacher on a small synthetic dataset, end to end, on a laptop.

    generate data -> nnUNetv2_plan_and_preprocess -> nnUNetv2_mona_preprocess_unlabeled -> nnUNetv2_train (each
    trainer) -> nnUNetv2_predict (held-out test patients) -> nnU-Net's evaluation -> results.md/.json + comparison.png

Everything lives in one work folder (default ./nnunet_mona_demo); a re-run continues an interrupted demo.
"""
import argparse
import os
import time
from typing import List, Optional

from nnunet_mona.demo import pipeline
from nnunet_mona.demo.console import DemoError, format_seconds, log, step
from nnunet_mona.demo.evaluation import (dice_row, dice_rows_by_group, display_name, evaluate_folder,
                                         markdown_group_table, markdown_table, write_results)
from nnunet_mona.demo.figure import make_comparison_figure
from nnunet_mona.demo.pipeline import DatasetSettings, DemoSettings, TrainingSettings
from nnunet_mona.cli.arguments import command_parser, run_command

# Mean Teacher without the default's supervised warm-up: at the demo's 1000 iterations the warm-up leaves its
# semi-supervised half too short (docs/results.md); the recipe measured over the demo's seeds
DEFAULT_TRAINERS = ["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher_randomStart"]
SEMI_SUPERVISED = ("MeanTeacher", "MONA", "ACTION", "MixCL", "SemiSupervised")
# The default scenario: labeled patients from one scanner, unlabeled and test patients from scanners up to
# scanner_shift away (synthetic_dataset.seen_by_scanner), no rare lesion class (Mean Teacher loses on it; see
# docs/results.md). 20 x 50 iterations: with much fewer, neither trainer learns enough for the scanner gap to show.
PRESETS = {
    "default": {"num_labeled": 3, "num_unlabeled": 30, "num_test": 8, "size": [64, 64], "num_slices": 3,
                "epochs": 20, "iterations": 50, "val_iterations": 2, "scanner_shift": 1.0,
                "lesion_probability": 0.0, "work_dir": "nnunet_mona_demo"},
    "quick": {"num_labeled": 3, "num_unlabeled": 6, "num_test": 2, "size": [64, 64], "num_slices": 2,
              "epochs": 2, "iterations": 5, "val_iterations": 1, "scanner_shift": 1.0,
              "lesion_probability": 0.0, "work_dir": "nnunet_mona_demo_quick"},
}


def build_parser() -> argparse.ArgumentParser:
    d, q = PRESETS["default"], PRESETS["quick"]
    parser = command_parser(
        "nnUNetv2_mona_demo",
        "End-to-end demo on a synthetic 'cardiac-like' dataset: a few labeled patients, all from one "
                    "scanner, and many unlabeled and held-out test patients from several scanners (the wall's "
                    "contrast, noise and bias field differ). Trains plain nnU-Net (labeled cases only) and "
                    "Mean Teacher (labeled + unlabeled) with the stock nnU-Net commands for a short budget, "
                    "predicts the test patients and prints a Dice table (results.md / results.json) and a figure "
                    "(comparison.png). Re-running continues an interrupted demo.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-o", "--output", default=None,
                        help=f"work folder (nnUNet_raw/preprocessed/results, predictions, logs, results). "
                             f"Default: ./{d['work_dir']} (./{q['work_dir']} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test of a few minutes: {q['num_labeled']}/{q['num_unlabeled']}/{q['num_test']} "
                             f"labeled/unlabeled/test patients of {q['size'][0]}x{q['size'][1]}, {q['epochs']} epochs "
                             f"x {q['iterations']} iterations (the numbers mean little)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="device for training and prediction; auto = cuda if available, else cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    parser.add_argument("--num_labeled", type=int, default=None,
                        help=f"labeled patients (2 frames each; all of them train, nnU-Net's fold 'all'). "
                             f"Default: {d['num_labeled']}")
    parser.add_argument("--num_unlabeled", type=int, default=None,
                        help=f"unlabeled patients (imagesUnlabeled). Default: {d['num_unlabeled']}")
    parser.add_argument("--num_test", type=int, default=None,
                        help=f"held-out test patients (imagesTs/labelsTs). Default: {d['num_test']}")
    parser.add_argument("--scanner_shift", type=float, default=None,
                        help=f"how far the unlabeled and test patients' scanners may differ from the labeled "
                             f"patients' one (0 = all patients from the same scanner, 1 = up to a wall with little "
                             f"contrast to the surrounding tissue, noisier images and a stronger bias field). Default: "
                             f"{d['scanner_shift']}")
    parser.add_argument("--lesion_probability", type=float, default=None,
                        help=f"share of patients with a small rare 'lesion' class (0 = no lesion class; the first "
                             f"labeled patient always shows one when > 0). Default: {d['lesion_probability']}")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs of every trainer. Default: {d['epochs']}")
    parser.add_argument("--iterations", type=int, default=None,
                        help=f"iterations per epoch of every trainer. Default: {d['iterations']}")
    parser.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS,
                        help="nnU-Net trainers to compare (any trainer nnUNetv2_train finds; semi-supervised ones "
                             "use the unlabeled patients)")
    parser.add_argument("--tta", choices=["auto", "on", "off"], default="auto",
                        help="nnU-Net's mirroring test-time augmentation when predicting the test set; auto = on "
                             "with cuda, off on cpu (4x faster; the same for every trainer)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete what an earlier demo left in the work folder and run every step again "
                             "(default: skip finished steps)")
    parser.add_argument("--verbose", action="store_true",
                        help="stream the full output of the nnU-Net commands (default: one line per epoch; "
                             "full logs are in <work folder>/logs)")
    return parser


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """DemoSettings from the parsed options (unset options come from the default or --quick preset)."""
    preset = PRESETS["quick" if args.quick else "default"]

    def pick(name):
        value = getattr(args, name, None)
        return preset[name] if value is None else value

    dataset = DatasetSettings(num_labeled=pick("num_labeled"), num_unlabeled=pick("num_unlabeled"),
                              num_test=pick("num_test"), size=list(preset["size"]),
                              num_slices=preset["num_slices"], seed=args.seed,
                              scanner_shift=pick("scanner_shift"),
                              lesion_probability=pick("lesion_probability"))
    training = TrainingSettings(epochs=pick("epochs"), iterations=pick("iterations"),
                                val_iterations=preset["val_iterations"])
    if dataset.num_labeled < 1:
        raise DemoError("--num_labeled must be >= 1")
    if not 0.0 <= dataset.lesion_probability <= 1.0:
        raise DemoError(f"--lesion_probability must be between 0 and 1 (got {dataset.lesion_probability})")
    if not 0.0 <= dataset.scanner_shift <= 1.0:
        raise DemoError(f"--scanner_shift must be between 0 and 1 (got {dataset.scanner_shift})")
    if dataset.num_test < 1 or dataset.num_unlabeled < 0:
        raise DemoError("--num_test must be >= 1 and --num_unlabeled >= 0")
    if training.epochs < 1 or training.iterations < 1:
        raise DemoError("--epochs and --iterations must be >= 1")
    semi = [t for t in args.trainers if any(k in t for k in SEMI_SUPERVISED)]
    if semi and dataset.num_unlabeled == 0:
        raise DemoError(f"{semi} need unlabeled patients: --num_unlabeled must be >= 1")
    device = args.device
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tta = device == "cuda" if args.tta == "auto" else args.tta == "on"
    work_dir = os.path.abspath(args.output or preset["work_dir"])
    return DemoSettings(work_dir=work_dir, dataset=dataset, training=training, trainers=list(args.trainers),
                        device=device, tta=tta, overwrite=args.overwrite, verbose=args.verbose)


def run_demo(s: DemoSettings) -> dict:
    """All steps; returns {'dice': {trainer: {class: Dice, 'mean': ...}}, 'files': {...}, 'timings': {...}}."""
    start = time.time()
    timings, cpu, skipped = {}, {}, []
    d, t = s.dataset, s.training
    print(f"nnunet_mona demo: {', '.join(display_name(x) for x in s.trainers)} on a synthetic dataset\n"
          f"  work folder: {s.work_dir}\n"
          f"  data: {d.num_labeled} labeled / {d.num_unlabeled} unlabeled / {d.num_test} test patients "
          f"(2 frames each), {d.num_slices} slices of {d.size[0]}x{d.size[1]}, seed {d.seed}\n"
          f"  budget: {t.epochs} epochs x {t.iterations} iterations per trainer, device {s.device}, "
          f"test-time mirroring {'on' if s.tta else 'off'}", flush=True)
    with step("Step 1/7: work folder and environment", timings, "setup", cpu):
        pipeline.prepare_work_dir(s)
        pipeline.configure_environment(s)
        log(f"nnUNet_raw/_preprocessed/_results under {s.work_dir}; nnUNet_n_proc_DA="
            f"{os.environ['nnUNet_n_proc_DA']} nnUNet_def_n_proc={os.environ['nnUNet_def_n_proc']}")
    with step("Step 2/7: synthetic dataset", timings, "dataset", cpu):
        roles = pipeline.generate_dataset(s)
    with step("Step 3/7: nnU-Net planning + preprocessing, then the unlabeled images", timings, "preprocessing",
              cpu):
        pipeline.plan_and_preprocess(s)
        if d.num_unlabeled > 0:
            pipeline.preprocess_unlabeled(s)
    for i, trainer in enumerate(s.trainers):
        with step(f"Step 4/7: training {display_name(trainer)} ({trainer}), trainer {i + 1}/{len(s.trainers)}",
                  timings, f"train {trainer}", cpu):
            if not pipeline.train(s, trainer):
                skipped.append(trainer)
    prediction_folders = {}
    for trainer in s.trainers:
        with step(f"Step 5/7: predicting the {len(roles['test'])} test cases with {trainer}", timings,
                  f"predict {trainer}", cpu):
            prediction_folders[trainer] = pipeline.predict(s, trainer, roles["test"])

    classes = pipeline.class_names(s)
    with step("Step 6/7: evaluation (nnU-Net's compute_metrics, per test case)", timings, "evaluation", cpu):
        rows, by_group = {}, pipeline.scanner_groups(s, roles["test"])
        for trainer, folder in prediction_folders.items():
            summary = evaluate_folder(folder, os.path.join(s.raw_dataset, "labelsTs"),
                                      os.path.join(s.raw_dataset, "dataset.json"),
                                      os.path.join(s.preprocessed_dataset, "nnUNetPlans.json"))
            rows[trainer] = dice_row(summary, classes)
            if by_group:
                by_group.setdefault("dice", {})[trainer] = dice_rows_by_group(summary, classes, by_group["cases"])
        protocol = {
            "dataset": f"{s.dataset_folder_name} (nnunet_mona.demo.synthetic_dataset, seed {d.seed}, "
                       f"{d.num_slices} slices of {d.size[0]}x{d.size[1]})",
            "labeled cases": f"{len(roles['labeled'])} ({d.num_labeled} patients); every one trains (nnU-Net fold "
                             f"'{pipeline.FOLD}'); nnU-Net's own validation of fold 'all' (the training cases) is "
                             f"skipped, the test cases are the held-out evaluation",
            "unlabeled cases": f"{len(roles['unlabeled'])} ({d.num_unlabeled} patients, imagesUnlabeled; used by "
                               f"semi-supervised trainers only)",
            "test cases": f"{len(roles['test'])} ({d.num_test} held-out patients, labelsTs)",
            "configuration": f"{pipeline.CONFIGURATION}, fold {pipeline.FOLD}, nnUNetPlans",
            "budget": f"{t.epochs} epochs x {t.iterations} iterations per trainer",
            "device": s.device,
            "prediction": f"nnUNetv2_predict, test-time mirroring {'on' if s.tta else 'off'}",
            "evaluation": "nnU-Net compute_metrics_on_folder: Dice per case, classes absent from reference and "
                          "prediction skipped, averaged over cases; mean = over foreground classes",
        }
        files = write_results(s.work_dir, rows, list(classes.values()), protocol, by_group)
        print("\n" + markdown_table(rows, list(classes.values())) + "\n", flush=True)
        if by_group:
            print(markdown_group_table(by_group["dice"], list(classes.values()), by_group["titles"]) + "\n"
                  + by_group["note"] + "\n", flush=True)
    with step("Step 7/7: figure", timings, "figure", cpu):
        files["figure"] = make_comparison_figure(
            s.path("comparison.png"), os.path.join(s.raw_dataset, "imagesTs"), os.path.join(s.raw_dataset, "labelsTs"),
            prediction_folders, rows, classes, ".nii.gz")
    total = time.time() - start
    timings["total"] = round(total, 1)
    cpu["total"] = round(sum(cpu.values()), 1)
    _print_summary(s, rows, classes, files, timings, skipped)
    return {"dice": rows, "files": files, "timings": timings, "cpu_timings": cpu}


def _print_summary(s: DemoSettings, rows: dict, classes: dict, files: dict, timings: dict,
                   skipped: List[str]) -> None:
    print("\n" + "=" * 78)
    print(f"[{time.strftime('%H:%M:%S')}] nnunet_mona demo finished in {format_seconds(timings['total'])} "
          f"(device {s.device}" + ("; trainings of an earlier run were reused" if skipped else "") + ")")
    print(markdown_table(rows, list(classes.values())))
    print("Dice in %, held-out test patients, nnU-Net's evaluation. Short budget: numbers vary with --seed; "
          "compare trainers within one run.")
    for trainer in s.trainers:
        took = "trained by an earlier run" if trainer in skipped else format_seconds(timings[f"train {trainer}"])
        print(f"  training time {display_name(trainer)}: {took}")
    print(f"  table:   {files['markdown']}\n           {files['json']}")
    print(f"  figure:  {files['figure']}")
    print(f"  models:  {s.path('nnUNet_results', s.dataset_folder_name)}")
    print(f"  logs:    {s.path('logs')}")
    print("=" * 78, flush=True)


def main(argv: Optional[List[str]] = None) -> dict:
    """Parse ``argv`` and run the demo; returns run_demo's result."""
    args = build_parser().parse_args(argv)
    return run_demo(settings_from_args(args))


def entry_point() -> None:
    run_command(main, (DemoError,))


if __name__ == "__main__":
    entry_point()
