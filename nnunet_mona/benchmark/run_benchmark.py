"""``nnUNetv2_mona_benchmark``: plain nnU-Net vs semi-supervised trainers on N labeled patients, one command.

For each labeled count N and each trainer: stock nnU-Net training (``run_training`` via
:mod:`nnunet_mona.benchmark.train_and_measure`) with the same budget for all, stock ``nnUNetv2_predict`` of the
evaluation images, :mod:`nnunet_mona.benchmark.evaluate` (MONA protocol and mm), then results.json / .md / .png.

Resumable: a step whose outputs are complete is skipped (training: checkpoint_final.pth; prediction: every
evaluation case predicted and its record written; evaluation: the metrics JSON); an interrupted training continues
with ``--c`` from checkpoint_latest.pth. A pretraining chain ``A+B`` (:mod:`nnunet_mona.benchmark.chains`) trains
its stages in order, each from the previous stage's final checkpoint, and resumes per stage (a stage whose
predecessor was trained again starts over). Folder layout: :mod:`nnunet_mona.benchmark.layout`.
"""
import argparse
import os
import shutil
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from typing import Dict, List, Optional

from nnunet_mona.benchmark import preparation as prep
from nnunet_mona.benchmark.evaluate import PROTOCOLS, evaluate_folders, save_json
from nnunet_mona.benchmark.chains import check_specs, is_chain, row_name
from nnunet_mona.benchmark.layout import Layout, RunPaths
from nnunet_mona.benchmark.processes import BenchmarkError, EpochProgress, command_path, run_logged, say
from nnunet_mona.benchmark.published import is_acdc_like, published_rows
from nnunet_mona.benchmark.report import bar_chart, markdown

NOTHING_RUN_MARKER = "RESUMED: every step was already complete, nothing was run"


def _load_json(path: str):
    import json
    with open(path) as f:
        return json.load(f)


class Benchmark:
    """Holds the checked settings; :meth:`run_one` does train -> predict -> evaluate for one (N, trainer)."""

    def __init__(self, args, layout: Layout, eval_images: str, eval_labels: str, eval_cases: List[str],
                 labels: List[int], names: List[str]):
        self.args, self.layout = args, layout
        self.eval_images, self.eval_labels, self.eval_cases = eval_images, eval_labels, eval_cases
        self.labels, self.names = labels, names
        self.steps_run: List[str] = []
        self._lock = threading.Lock()

    def env_for(self, n: int, results_root: str) -> Dict[str, str]:
        a = self.args
        env = dict(os.environ)
        env.update({"nnUNet_preprocessed": self.layout.preprocessed_root(n), "nnUNet_results": results_root,
                    "nnUNet_mona_epochs": str(a.epochs), "nnUNet_mona_iterations": str(a.iterations)})
        if a.val_iterations is not None:
            env["nnUNet_mona_val_iterations"] = str(a.val_iterations)
        if a.seed is not None:
            env["nnUNet_mona_seed"] = str(a.seed)
        return env

    def _ran(self, step: str) -> None:
        with self._lock:
            self.steps_run.append(step)

    def train(self, n: int, paths: RunPaths, prefix: str) -> None:
        """Train every stage of the row in order; a stage whose predecessor was (re)trained now starts over."""
        previous, redo = None, False
        for stage in paths.stages:
            pretrained = os.path.join(paths.fold_folder(previous), "checkpoint_final.pth") if previous else None
            redo = self.train_stage(n, paths, stage, pretrained, redo, prefix)
            previous = stage

    def train_stage(self, n: int, paths: RunPaths, stage: str, pretrained: Optional[str], restart: bool,
                    prefix: str) -> bool:
        """Train one stage (from ``pretrained`` when given); ``restart`` discards an earlier training of it.
        Returns whether it trained (then every later stage, prediction and evaluation are stale)."""
        a = self.args
        fold_folder = paths.fold_folder(stage)
        if paths.spec != stage:
            prefix = f"{prefix} stage {stage.replace('nnUNetTrainer', '') or stage}:"
        if restart and os.path.isdir(fold_folder):
            say(f"{prefix} the previous stage was retrained: training this stage again from its new weights")
            shutil.rmtree(fold_folder)
        if os.path.isfile(os.path.join(fold_folder, "checkpoint_final.pth")):
            say(f"{prefix} [skip] training: checkpoint_final.pth exists")
            return False
        # anything predicted or evaluated before belongs to an older model
        for stale in (paths.predictions, paths.predict_record, paths.metrics, paths.train_record(stage)):
            if os.path.isdir(stale):
                shutil.rmtree(stale)
            elif os.path.isfile(stale):
                os.remove(stale)
        lay = self.layout
        cmd = [sys.executable, "-m", "nnunet_mona.benchmark.train_and_measure", lay.dataset_name, lay.configuration,
               lay.fold, "-tr", stage, "-p", lay.plans, "-device", a.device, "--record", paths.train_record(stage),
               "--iterations_per_epoch", str(a.iterations)]
        resumed = os.path.isfile(os.path.join(fold_folder, "checkpoint_latest.pth"))
        if resumed:
            cmd.append("--c")  # the checkpoint holds the pretrained start already (nnU-Net refuses both)
        elif pretrained:
            cmd += ["-pretrained_weights", pretrained]
        say(f"{prefix} {'continuing the interrupted training (--c)' if resumed else 'training'}: "
            f"{a.epochs} x {a.iterations} iterations  (log: {paths.train_log(stage)})")
        self._ran("train")
        run_logged(cmd, paths.train_log(stage), self.env_for(n, paths.results_root), prefix,
                   EpochProgress(a.epochs))
        return True

    def stage_record(self, paths: RunPaths, stage: str) -> dict:
        """The wrapper's record, or (trained elsewhere / killed during nnU-Net's final validation) the timing from
        the checkpoint with unknown memory and wall time."""
        path = paths.train_record(stage)
        if os.path.isfile(path):
            return _load_json(path)
        from nnunet_mona.benchmark.train_and_measure import epoch_timing
        final = os.path.join(paths.fold_folder(stage), "checkpoint_final.pth")
        return {"peak_gpu_memory_bytes": None, "wall_seconds_this_segment": None,
                "note": "no record of the training process; timing from the checkpoint",
                **epoch_timing(final, self.args.iterations)}

    def train_record(self, paths: RunPaths) -> dict:
        """The final stage's record; for a chain with ``stages`` (every stage's record), the wall time summed over
        the stages and the largest peak GPU memory of any stage."""
        if len(paths.stages) == 1:
            return self.stage_record(paths, paths.final)
        records = [dict(self.stage_record(paths, stage), stage=stage) for stage in paths.stages]
        walls = [r.get("wall_seconds_this_segment") for r in records]
        peaks = [r.get("peak_gpu_memory_bytes") for r in records if r.get("peak_gpu_memory_bytes") is not None]
        return dict(records[-1], stages=records, final_stage_wall_seconds=walls[-1],
                    wall_seconds_this_segment=None if None in walls else round(sum(walls), 1),
                    peak_gpu_memory_bytes=max(peaks) if peaks else None)

    def predict(self, n: int, paths: RunPaths, prefix: str) -> None:
        lay, a = self.layout, self.args
        out = paths.predictions
        complete = all(os.path.isfile(os.path.join(out, c + a.file_ending)) for c in self.eval_cases)
        if complete and os.path.isfile(paths.predict_record):
            say(f"{prefix} [skip] prediction: all {len(self.eval_cases)} evaluation cases predicted")
            return
        if os.path.isfile(paths.metrics):
            os.remove(paths.metrics)
        cmd = [command_path("nnUNetv2_predict"), "-i", self.eval_images, "-o", out, "-d", lay.dataset_name,
               "-c", lay.configuration, "-p", lay.plans, "-tr", paths.final, "-f", lay.fold, "-device", a.device,
               "--disable_progress_bar", "--continue_prediction"]
        if a.np is not None:
            cmd += ["-npp", str(a.np), "-nps", str(a.np)]
        if a.disable_tta:
            cmd.append("--disable_tta")
        say(f"{prefix} predicting {len(self.eval_cases)} evaluation volume(s)  (log: {paths.predict_log})")
        self._ran("predict")
        start = time.time()
        run_logged(cmd, paths.predict_log, self.env_for(n, paths.results_root), prefix)
        missing = [c for c in self.eval_cases if not os.path.isfile(os.path.join(out, c + a.file_ending))]
        if missing:
            raise BenchmarkError(f"{prefix} nnUNetv2_predict wrote no prediction for {missing[:10]}; "
                                 f"see {paths.predict_log}")
        save_json({"wall_seconds": round(time.time() - start, 1), "command": " ".join(cmd)}, paths.predict_record)

    def evaluate(self, paths: RunPaths, prefix: str) -> dict:
        path = paths.metrics
        if os.path.isfile(path):
            result = _load_json(path)
            if sorted(result.get("cases", [])) == sorted(self.eval_cases):
                say(f"{prefix} [skip] evaluation: {path} exists")
                return result
        self._ran("evaluate")
        result = evaluate_folders(paths.predictions, self.eval_labels, self.labels, self.names,
                                  self.args.file_ending)
        save_json(result, path)
        mean = result["summary"]["mona"]["mean"]
        say(f"{prefix} Dice {100 * mean['dice']:.1f} % (MONA protocol), ASD {mean['asd']:.2f} vox")
        return result

    def run_one(self, n: int, spec: str) -> dict:
        """Train (every stage), predict and evaluate one row; a failure is recorded in the row, not raised."""
        paths = self.layout.run_paths(n, spec)
        prefix = f"[N={n} {'+'.join(t.replace('nnUNetTrainer', '') or t for t in paths.stages)}]"
        run = {"n_labeled": n, "trainer": row_name(spec), "fold_folder": paths.fold_folder(paths.final),
               "predictions": paths.predictions, "metrics_file": paths.metrics,
               "train_log": paths.train_log(paths.final)}
        if is_chain(spec):
            run.update(spec=spec, stages=paths.stages, results_root=paths.results_root)
        try:
            self.train(n, paths, prefix)
            run["train"] = self.train_record(paths)
            self.predict(n, paths, prefix)
            run["predict"] = _load_json(paths.predict_record)
            result = self.evaluate(paths, prefix)
            run.update(status="ok", summary=result["summary"])
        except Exception as e:  # one failed run must not stop the others; the report shows it
            run.update(status="failed", error=str(e))
            say(f"{prefix} FAILED: {e}")
        return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_mona_benchmark",
        description="Train, predict and evaluate plain nnU-Net and semi-supervised trainers on N labeled patients "
                    "with one budget; writes results.json / results.md / results.png. Re-running resumes.")
    parser.add_argument("-d", required=True, help="dataset name or id (raw dataset in nnUNet_raw)")
    parser.add_argument("--labeled", type=int, nargs="+", default=[1, 3, 7],
                        help="labeled patient counts N; each needs a split file (see --splits_pattern). Default: 1 3 7")
    parser.add_argument("--trainers", nargs="+",
                        default=["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher", "nnUNetTrainerMONA"],
                        help="trainer class names (nnunet_mona trainers, which honour the budget), or pretraining "
                             "chains A+B[+C]: each stage trains the full budget starting from the previous stage's "
                             "checkpoint_final.pth (-pretrained_weights), the last stage is evaluated, in its own "
                             "folder labeled_N/chains/A+B (e.g. nnUNetTrainerMixCLPretrain+nnUNetTrainerBudget). "
                             "Default: nnUNetTrainerBudget nnUNetTrainerMeanTeacher nnUNetTrainerMONA")
    parser.add_argument("--epochs", type=int, required=True, help="epochs per training (nnUNet_mona_epochs)")
    parser.add_argument("--iterations", type=int, required=True,
                        help="training iterations per epoch (nnUNet_mona_iterations)")
    parser.add_argument("--val_iterations", type=int, default=None,
                        help="validation iterations per epoch (nnUNet_mona_val_iterations). Default: nnU-Net's (50)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="training and inference device. Default: cuda if available, else cpu")
    parser.add_argument("--parallel", type=int, default=1,
                        help="number of (N, trainer) runs at once (e.g. several trainings sharing one GPU). Default: 1")
    parser.add_argument("--fold", type=int, default=0, help="fold of the split files to train. Default: 0")
    parser.add_argument("-c", default="2d", help="nnU-Net configuration. Default: 2d")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    parser.add_argument("-o", default=None,
                        help="output folder (runs, logs, predictions, results). Default: "
                             "nnUNet_results/<DatasetXXX>/mona_benchmark_<epochs>x<iterations>")
    parser.add_argument("--test_images", default="imagesTs",
                        help="evaluation images: a folder in the raw dataset or an absolute path. Default: imagesTs")
    parser.add_argument("--test_labels", default="labelsTs",
                        help="evaluation labels: a folder in the raw dataset or an absolute path. Default: labelsTs")
    parser.add_argument("--splits_pattern", default="splits_final_{n}labeled.json",
                        help="split file per N in the raw dataset folder ({n} = N). "
                             "Default: splits_final_{n}labeled.json (written by the ACDC converters)")
    parser.add_argument("--make_missing_splits", action="store_true",
                        help="make a split with nnunet_mona.data.splits for an N whose split file is missing "
                             "(random patients, --split_seed; kept in the output folder)")
    parser.add_argument("--split_seed", type=int, default=12345, help="seed of --make_missing_splits. Default: 12345")
    parser.add_argument("--patient_regex", default=r"^(.+?)_frame\d+$",
                        help="patient id of a case for --make_missing_splits (first group). Default: %(default)r")
    parser.add_argument("--seed", type=int, default=None,
                        help="training seed passed as nnUNet_mona_seed (recorded). Default: none (unseeded)")
    parser.add_argument("--np", type=int, default=None,
                        help="processes for preprocessing and for nnUNetv2_predict (-npp/-nps). Default: nnU-Net's")
    parser.add_argument("--disable_tta", action="store_true", help="predict without mirroring (faster)")
    parser.add_argument("--file_ending", default=".nii.gz", help="file ending of the raw images. Default: .nii.gz")
    return parser


def _check_args(args) -> None:
    for option in ("epochs", "iterations", "parallel"):
        if getattr(args, option) < 1:
            raise BenchmarkError(f"--{option} must be >= 1")
    if args.val_iterations is not None and args.val_iterations < 1:
        raise BenchmarkError("--val_iterations must be >= 1")
    if any(n < 1 for n in args.labeled) or len(set(args.labeled)) != len(args.labeled):
        raise BenchmarkError(f"--labeled must be distinct positive counts, got {args.labeled}")
    import torch
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda, but torch sees no CUDA device (use --device cpu for a smoke test)")


def run(args) -> int:
    start = time.time()
    _check_args(args)
    dataset_name, raw_folder, dataset_json = prep.resolve_dataset(args.d)
    dataset_id = dataset_name[len("Dataset"):len("Dataset") + 3]
    labels, names = prep.foreground_labels(dataset_json)
    images, label_folder, eval_cases = prep.evaluation_cases(raw_folder, args.test_images, args.test_labels,
                                                             args.file_ending)
    output = os.path.abspath(args.o or os.path.join(os.environ["nnUNet_results"], dataset_name,
                                                    f"mona_benchmark_{args.epochs}x{args.iterations}"))
    layout = Layout(output, dataset_name, args.c, args.p, str(args.fold))
    case_ids = prep.training_case_ids(raw_folder, args.file_ending)
    splits = {n: prep.load_split(raw_folder, args.splits_pattern, n, args.fold, layout, args.make_missing_splits,
                                 args.split_seed, args.patient_regex, case_ids, eval_cases) for n in args.labeled}
    # every stage of every chain; imports every nnU-Net trainer: after the cheap checks
    trainer_modules = prep.check_trainers(check_specs(args.trainers))
    os.makedirs(output, exist_ok=True)
    say(f"{dataset_name}: N = {args.labeled} labeled x {args.trainers}, {args.epochs} x {args.iterations} iterations "
        f"on {args.device}, {len(eval_cases)} evaluation volumes; output {output}")

    from nnunetv2.configuration import default_num_processes
    np_ = args.np if args.np is not None else default_num_processes
    shared = prep.plan_and_preprocess(dataset_id, dataset_name, args.p, args.c, len(case_ids), np_,
                                      layout.file("plan_and_preprocess.log"))
    has_unlabeled = prep.preprocess_unlabeled(raw_folder, dataset_id, args.p, args.c, np_,
                                              layout.file("preprocess_unlabeled.log"))
    for n, (folds, _) in splits.items():
        prep.install_split(layout, n, shared, folds, args.fold, args.trainers)

    bench = Benchmark(args, layout, images, label_folder, eval_cases, labels, names)
    jobs = [(n, t) for n in args.labeled for t in args.trainers]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        runs = list(pool.map(lambda job: bench.run_one(*job), jobs))

    import torch
    fold_entries = {n: folds[args.fold] for n, (folds, _) in splits.items()}
    results = {
        "protocol": {
            "dataset": dataset_id, "dataset_name": dataset_name, "configuration": args.c, "plans": args.p,
            "fold": args.fold, "labeled_counts": args.labeled, "trainers": [row_name(t) for t in args.trainers],
            "trainer_specs": args.trainers,
            "trainer_modules": trainer_modules, "class_names": names, "class_labels": labels,
            "epochs": args.epochs, "iterations_per_epoch": args.iterations, "val_iterations": args.val_iterations,
            "device": args.device, "parallel": args.parallel, "host": socket.gethostname(),
            "gpu_name": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
            "seed": args.seed, "split_seed": args.split_seed if args.make_missing_splits else None,
            "disable_tta": args.disable_tta, "unlabeled_images_folder": has_unlabeled,
            "splits": {str(n): {"source": src, "digest": prep.split_digest(folds, args.fold),
                                "labeled_cases": len(fold_entries[n]["train"]),
                                "unlabeled_cases": len(fold_entries[n]["unlabeled"]),
                                "train": fold_entries[n]["train"]} for n, (folds, src) in splits.items()},
            "evaluation": {"images": images, "labels": label_folder, "n_volumes": len(eval_cases),
                           "cases": eval_cases, "protocols": PROTOCOLS},
            "versions": {p: version(p) for p in ("nnunetv2", "torch", "nnunet_mona")
                         if _has_distribution(p)},
            "command": " ".join(sys.argv), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "wall_seconds_total": round(time.time() - start, 1),
            "steps_run_this_invocation": sorted(bench.steps_run),
        },
        "runs": runs,
    }
    if is_acdc_like(names):
        results["published"] = {str(n): published_rows(n) for n in args.labeled}
    save_json(results, layout.file("results.json"))
    with open(layout.file("results.md"), "w") as f:
        f.write(markdown(results))
    bar_chart(results, layout.file("results.png"))
    say(f"results: {layout.file('results.md')}, {layout.file('results.json')}, {layout.file('results.png')}")
    if not bench.steps_run:
        say(NOTHING_RUN_MARKER)
    failed = [f"N={r['n_labeled']} {r['trainer']}" for r in runs if r["status"] != "ok"]
    if failed:
        say(f"{len(failed)} run(s) failed: {failed}; re-run the same command to retry them")
        return 1
    return 0


def _has_distribution(name: str) -> bool:
    try:
        version(name)
        return True
    except Exception:
        return False


def entry_point(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = run(args)
    except BenchmarkError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
