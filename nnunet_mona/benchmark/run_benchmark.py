"""``nnUNetv2_mona_benchmark``: plain nnU-Net vs semi-supervised trainers on N labeled patients, one command.

For each labeled count N and each trainer: stock nnU-Net training (``run_training`` via
:mod:`nnunet_mona.benchmark.train_and_measure`) with the same budget for all, stock ``nnUNetv2_predict`` of the
evaluation images, :mod:`nnunet_mona.benchmark.evaluate` (MONA protocol and mm), then results.json / .md / .png.

Resumable: a step whose outputs are complete is skipped (training: checkpoint_final.pth; prediction: every
evaluation case predicted and its record written; evaluation: the metrics JSON); an interrupted training continues
with ``--c`` from checkpoint_latest.pth. A pretraining chain ``A+B`` (:mod:`nnunet_mona.benchmark.chains`) trains
its stages in order, each from the previous stage's final checkpoint, and resumes per stage (a stage whose
predecessor was trained again starts over). ``SelfTraining`` (:mod:`nnunet_mona.benchmark.self_training`) is offline
self-training: the plain row's model pseudo-labels the fold's unlabeled cases, plain nnU-Net trains again on labeled +
pseudo-labeled cases; as a chain's first stage (``SelfTraining+nnUNetTrainerMeanTeacher``) its final model starts
the next stage. ``--batch_size`` trains with a plans copy (:mod:`nnunet_mona.benchmark.plans_copy`),
``--preset`` fills the options of a named protocol (:mod:`nnunet_mona.benchmark.presets`), ``--checkpoint teacher``
predicts the EMA teacher where a trainer writes one. An output folder keeps one protocol
(:mod:`nnunet_mona.benchmark.protocol_guard`). Folder layout: :mod:`nnunet_mona.benchmark.layout`.
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
from typing import Dict, List, Optional, Sequence

from nnunet_mona.benchmark import preparation as prep
from nnunet_mona.cli.arguments import command_parser, run_command
from nnunet_mona.benchmark.evaluate import PROTOCOLS, evaluate_folders, save_json
from nnunet_mona.benchmark.chains import check_specs, is_chain, row_name, stage_trainer
from nnunet_mona.benchmark.earlier_rows import keep_earlier_rows
from nnunet_mona.benchmark.layout import Layout, RunPaths
from nnunet_mona.benchmark.plans_copy import (batch_plans_name, check_batch_size, install_batch_plans,
                                              install_unlabeled_for_copy)
from nnunet_mona.benchmark.presets import PRESETS, apply_preset, check_dataset_for_preset
from nnunet_mona.benchmark.protocol_guard import check_same_protocol, plans_facts, protocol_key, write_stamp
from nnunet_mona.benchmark.self_training import BASE_TRAINER, SELF_TRAINING
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
                 labels: List[int], names: List[str], teachers: Sequence[str] = ()):
        self.args, self.layout = args, layout
        self.eval_images, self.eval_labels, self.eval_cases = eval_images, eval_labels, eval_cases
        self.labels, self.names = labels, names
        self.teachers = set(teachers)  # trainers that write checkpoint_final_teacher.pth
        self.steps_run: List[str] = []
        self._lock = threading.Lock()
        self._train_locks: Dict[str, threading.Lock] = {}

    def paths(self, n: int, spec: str) -> RunPaths:
        """The row's paths; with ``--checkpoint teacher`` those of the teacher where the last stage writes one."""
        paths = self.layout.run_paths(n, spec)
        if self.args.checkpoint == "teacher" and spec != SELF_TRAINING and paths.final in self.teachers:
            return paths.for_checkpoint("teacher")
        return paths

    def env_for(self, n: int, results_root: str, preprocessed_root: Optional[str] = None) -> Dict[str, str]:
        a = self.args
        env = dict(os.environ)
        env.update({"nnUNet_preprocessed": preprocessed_root or self.layout.preprocessed_root(n),
                    "nnUNet_results": results_root,
                    "nnUNet_mona_epochs": str(a.epochs), "nnUNet_mona_iterations": str(a.iterations)})
        if a.val_iterations is not None:
            env["nnUNet_mona_val_iterations"] = str(a.val_iterations)
        if a.seed is not None:
            env["nnUNet_mona_seed"] = str(a.seed)
        # spinning OpenMP threads steal the cores of the augmentation workers (and of a parallel row) on a CPU
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        # nnUNetv2_train's final validation predicts the split's validation cases, which the benchmark never reads
        # (it predicts and scores its own evaluation set); exporting nnUNet_mona_skip_validation=0 keeps it
        env.setdefault("nnUNet_mona_skip_validation", "1")
        return env

    def _ran(self, step: str) -> None:
        with self._lock:
            self.steps_run.append(step)

    def stage_paths(self, n: int, paths: RunPaths, index: int) -> RunPaths:
        """Where stage ``index`` of a row trains. A chain's first stage is the same training as the row of that
        trainer alone (same data, budget and seed), so it is trained once, in that row's folder, and shared (e.g.
        ``nnUNetTrainerBudget+nnUNetTrainerMeanTeacher`` starts from the plain row's model). A chain folder from
        before this sharing keeps using its own finished first stage."""
        if index > 0 or not is_chain(paths.spec):
            return paths
        first = paths.stages[0]
        if first == SELF_TRAINING:
            return self.layout.run_paths(n, SELF_TRAINING)
        if os.path.isfile(paths.final_checkpoint(first)):
            return paths
        return self.layout.run_paths(n, first)

    def train(self, n: int, paths: RunPaths, prefix: str) -> None:
        """Train every stage of the row in order; a stage whose predecessor was (re)trained, or is newer than it
        (a shared first stage retrained by another run), starts over."""
        previous, redo = None, False
        for index, stage in enumerate(paths.stages):
            where = self.stage_paths(n, paths, index)
            final = where.final_checkpoint(stage_trainer(stage))
            if previous and os.path.isfile(final) and os.path.getmtime(final) < os.path.getmtime(previous):
                redo = True
            label = prefix
            if is_chain(paths.spec):
                shared = " (= its own row's training)" if where is not paths else ""
                label = f"{prefix} stage {stage.replace('nnUNetTrainer', '') or stage}{shared}:"
            if stage == SELF_TRAINING:  # only ever first; a retraining shows in its final checkpoint's mtime
                self.self_train(n, where, label)
            else:
                redo = self.train_stage(n, where, stage, previous, redo, label)
            previous = final

    def train_stage(self, n: int, paths: RunPaths, stage: str, pretrained: Optional[str], restart: bool,
                    prefix: str) -> bool:
        """Train one stage (from ``pretrained`` when given); ``restart`` discards an earlier training of it.
        Returns whether it trained (then every later stage, prediction and evaluation are stale). One training per
        fold folder at a time (the plain row and SelfTraining share the plain model)."""
        folder = paths.fold_folder(stage)
        with self._lock:
            lock = self._train_locks.setdefault(folder, threading.Lock())
        with lock:
            return self._train_stage(n, paths, stage, pretrained, restart, prefix)

    def _train_stage(self, n: int, paths: RunPaths, stage: str, pretrained: Optional[str], restart: bool,
                     prefix: str) -> bool:
        a = self.args
        fold_folder = paths.fold_folder(stage)
        if restart and os.path.isdir(fold_folder):
            say(f"{prefix} the previous stage was retrained: training this stage again from its new weights")
            shutil.rmtree(fold_folder)
        if os.path.isfile(paths.final_checkpoint(stage)):
            say(f"{prefix} [skip] training: checkpoint_final.pth exists")
            return False
        # anything predicted or evaluated before belongs to an older model (student and teacher)
        stale_files = [p for c in ("student", "teacher") for v in [paths.for_checkpoint(c)]
                       for p in (v.predictions, v.predict_record, v.metrics)]
        for stale in stale_files + [paths.train_record(stage)]:
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
        run_logged(cmd, paths.train_log(stage), self.env_for(n, paths.results_root, paths.preprocessed_root(n)), prefix,
                   EpochProgress(a.epochs))
        return True

    def self_train(self, n: int, paths: RunPaths, prefix: str) -> None:
        """SelfTraining: the plain row's model (trained here if missing), pseudo-labels of the fold's unlabeled cases,
        plain nnU-Net again on labeled + pseudo-labeled cases. Pseudo-labels of an older plain model are redone."""
        lay, a = self.layout, self.args
        plain = lay.run_paths(n, BASE_TRAINER)
        self.train_stage(n, plain, BASE_TRAINER, None, False, f"{prefix} plain model:")
        model = plain.final_checkpoint(BASE_TRAINER)
        record = _load_json(paths.pseudo_label_record) if os.path.isfile(paths.pseudo_label_record) else {}
        fresh = record.get("model_mtime") == os.path.getmtime(model)
        if fresh:
            say(f"{prefix} [skip] pseudo-labels: {paths.pseudo_label_record} exists for the current plain model")
        else:
            if os.path.isfile(paths.pseudo_label_record):
                os.remove(paths.pseudo_label_record)
            cmd = [sys.executable, "-m", "nnunet_mona.benchmark.self_training", "--model",
                   plain.fold_folder(BASE_TRAINER), "--source", os.path.join(lay.preprocessed_root(n), lay.dataset_name),
                   "--target", os.path.join(paths.preprocessed_root(n), lay.dataset_name), "-p", lay.plans,
                   "-c", lay.configuration, "-f", lay.fold, "-device", a.device, "--record", paths.pseudo_label_record]
            if a.disable_tta:
                cmd.append("--disable_tta")
            say(f"{prefix} pseudo-labelling the fold's unlabeled cases  (log: {paths.pseudo_label_log})")
            self._ran("pseudo_label")
            run_logged(cmd, paths.pseudo_label_log, self.env_for(n, plain.results_root), prefix)
        self.train_stage(n, paths, BASE_TRAINER, None, not fresh, f"{prefix} retraining:")

    def self_training_record(self, n: int, paths: RunPaths) -> dict:
        """The retraining's record with ``stages`` (plain training, pseudo-labelling, retraining); the wall time is
        their sum."""
        plain = self.layout.run_paths(n, BASE_TRAINER)
        first = dict(self.stage_record(plain, BASE_TRAINER), stage="plain nnU-Net on the labeled cases")
        pseudo = dict(_load_json(paths.pseudo_label_record), stage="pseudo-labelling")
        last = dict(self.stage_record(paths, BASE_TRAINER), stage="plain nnU-Net on labeled + pseudo-labeled cases")
        walls = [first.get("wall_seconds_this_segment"), pseudo.get("wall_seconds"),
                 last.get("wall_seconds_this_segment")]
        peaks = [r["peak_gpu_memory_bytes"] for r in (first, last) if r.get("peak_gpu_memory_bytes") is not None]
        return dict(last, stages=[first, pseudo, last], final_stage_wall_seconds=walls[-1],
                    wall_seconds_this_segment=None if None in walls else round(sum(walls), 1),
                    peak_gpu_memory_bytes=max(peaks) if peaks else None)

    def stage_record(self, paths: RunPaths, stage: str) -> dict:
        """The wrapper's record, or (trained elsewhere / killed during nnU-Net's final validation) the timing from
        the checkpoint with unknown memory and wall time."""
        path = paths.train_record(stage)
        if os.path.isfile(path):
            return _load_json(path)
        from nnunet_mona.benchmark.train_and_measure import epoch_timing
        final = paths.final_checkpoint(stage)
        return {"peak_gpu_memory_bytes": None, "wall_seconds_this_segment": None,
                "note": "no record of the training process; timing from the checkpoint",
                **epoch_timing(final, self.args.iterations)}

    def train_record(self, n: int, paths: RunPaths) -> dict:
        """The final stage's record; for a chain with ``stages`` (every stage's record), the wall time summed over
        the stages and the largest peak GPU memory of any stage."""
        if len(paths.stages) == 1:
            return self.stage_record(paths, paths.final)
        records = [dict(self.self_training_record(n, self.stage_paths(n, paths, i)) if stage == SELF_TRAINING
                        else self.stage_record(self.stage_paths(n, paths, i), stage), stage=stage)
                   for i, stage in enumerate(paths.stages)]
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
        checkpoint = os.path.join(paths.fold_folder(paths.final), paths.checkpoint_file)
        if not os.path.isfile(checkpoint):
            raise BenchmarkError(f"{prefix} {checkpoint} does not exist (--checkpoint {paths.checkpoint})")
        cmd = [command_path("nnUNetv2_predict"), "-i", self.eval_images, "-o", out, "-d", lay.dataset_name,
               "-c", lay.configuration, "-p", lay.plans, "-tr", paths.final, "-f", lay.fold, "-device", a.device,
               "-chk", paths.checkpoint_file, "--disable_progress_bar", "--continue_prediction"]
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
        paths = self.paths(n, spec)
        shown = [spec] if spec == SELF_TRAINING else paths.stages
        prefix = f"[N={n} {'+'.join(t.replace('nnUNetTrainer', '') or t for t in shown)}]"
        run = {"n_labeled": n, "trainer": row_name(spec), "fold_folder": paths.fold_folder(paths.final),
               "checkpoint": paths.checkpoint, "checkpoint_file": paths.checkpoint_file,
               "predictions": paths.predictions, "metrics_file": paths.metrics,
               "train_log": paths.train_log(paths.final)}
        if is_chain(spec):
            run.update(spec=spec, stages=paths.stages, results_root=paths.results_root)
        if spec == SELF_TRAINING:
            run.update(spec=spec, results_root=paths.results_root, preprocessed_root=paths.preprocessed_root(n),
                       pseudo_label_record=paths.pseudo_label_record)
        try:
            if spec == SELF_TRAINING:
                self.self_train(n, paths, prefix)
                run["train"] = self.self_training_record(n, paths)
            else:
                self.train(n, paths, prefix)
                run["train"] = self.train_record(n, paths)
            self.predict(n, paths, prefix)
            run["predict"] = _load_json(paths.predict_record)
            result = self.evaluate(paths, prefix)
            run.update(status="ok", summary=result["summary"])
        except Exception as e:  # one failed run must not stop the others; the report shows it
            run.update(status="failed", error=str(e))
            say(f"{prefix} FAILED: {e}")
        return run


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "nnUNetv2_mona_benchmark",
        "Train, predict and evaluate plain nnU-Net and semi-supervised trainers on N labeled patients "
                    "with one budget; writes results.json / results.md / results.png. Re-running resumes.")
    parser.add_argument("-d", default=None, help="dataset name or id (raw dataset in nnUNet_raw); required unless "
                                                 "--preset gives it")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="a named protocol that fills every option not given on the command line: acdc_cpu = "
                             "the CPU-scale ACDC protocol (-d 27 converted with --downsample 2, --batch_size 8, "
                             "--labeled 3, plain nnU-Net / Mean Teacher / MONA, --epochs 20 --iterations 50 "
                             "--val_iterations 5, "
                             "--device cpu --disable_tta --seed 0); acdc_cpu_quarter = the same at a quarter of the "
                             "resolution (-d 28 converted with --downsample 4) with the SelfTraining and "
                             "nnUNetTrainerBudget+nnUNetTrainerMeanTeacher rows added; "
                             "refused for a dataset it does not fit")
    parser.add_argument("--labeled", type=int, nargs="+", default=None,
                        help="labeled patient counts N; each needs a split file (see --splits_pattern). Default: 1 3 7")
    parser.add_argument("--trainers", nargs="+", default=None,
                        help="trainer class names (nnunet_mona trainers, which honour the budget), pretraining "
                             "chains A+B[+C]: each stage trains the full budget starting from the previous stage's "
                             "checkpoint_final.pth (-pretrained_weights), the last stage is evaluated, in its own "
                             "folder labeled_N/chains/A+B (e.g. nnUNetTrainerMixCLPretrain+nnUNetTrainerBudget), or "
                             f"{SELF_TRAINING}: offline self-training (plain nnU-Net, pseudo-labels of the unlabeled "
                             "cases, plain nnU-Net again on labeled + pseudo-labeled cases, in labeled_N/self_training), "
                             f"also as a chain's first stage ({SELF_TRAINING}+nnUNetTrainerMeanTeacher). "
                             "Default: nnUNetTrainerBudget nnUNetTrainerMeanTeacher nnUNetTrainerMONA")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per training (nnUNet_mona_epochs); required unless --preset gives it")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations per epoch (nnUNet_mona_iterations); required unless --preset "
                             "gives it")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="patch batch size B (>= 2): every row trains with a copy of the plans, <plans>_bs<B>, "
                             "whose configuration has batch size B and the same data identifier (nothing is "
                             "preprocessed again). Default: the plans' own")
    parser.add_argument("--checkpoint", choices=["student", "teacher"], default="student",
                        help="model to predict: the student (checkpoint_final.pth) or, for trainers that write one, "
                             "the EMA teacher (checkpoint_final_teacher.pth); plain rows always use the student. "
                             "Default: student")
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
                        help="output folder (runs, logs, predictions, results); it keeps one protocol (another "
                             "budget, seed, plans, batch size or resolution is refused). Default: "
                             "nnUNet_results/<DatasetXXX>/mona_benchmark_<epochs>x<iterations>, with _<plans> before "
                             "the budget for other plans than nnUNetPlans or with --batch_size")
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
    parser.add_argument("--disable_tta", action=argparse.BooleanOptionalAction, default=None,
                        help="predict without mirroring (faster); --no-disable_tta mirrors even with a preset")
    parser.add_argument("--file_ending", default=".nii.gz", help="file ending of the raw images. Default: .nii.gz")
    return parser


def _check_args(args) -> None:
    if args.d is None:
        raise BenchmarkError("-d (the dataset) is required unless --preset gives it")
    missing = [f"--{o}" for o in ("epochs", "iterations") if getattr(args, o) is None]
    if missing:
        raise BenchmarkError(f"{' and '.join(missing)} required (or a --preset that sets them)")
    check_batch_size(args.batch_size)
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


def default_output(dataset_name: str, plans_name: str, epochs: int, iterations: int) -> str:
    """``nnUNet_results/<dataset>/mona_benchmark_[<plans>_]<epochs>x<iterations>`` (plans named unless default)."""
    plans_part = "" if plans_name == "nnUNetPlans" else f"{plans_name}_"
    return os.path.join(os.environ["nnUNet_results"], dataset_name, f"mona_benchmark_{plans_part}{epochs}x{iterations}")


def _install_plans_copy(args, layout: Layout, shared: str, target: str) -> None:
    """``--batch_size``: the plans copy (and, for imagesUnlabeled, its unlabeled folder) in ``target``."""
    plans = install_batch_plans(target, os.path.join(shared, args.p + ".json"), args.c, args.batch_size, layout.plans)
    install_unlabeled_for_copy(shared, target, args.p, layout.plans, args.c, plans)


def run(args) -> int:
    start = time.time()
    preset_options = apply_preset(args)
    _check_args(args)
    dataset_name, raw_folder, dataset_json = prep.resolve_dataset(args.d)
    dataset_id = dataset_name[len("Dataset"):len("Dataset") + 3]
    labels, names = prep.foreground_labels(dataset_json)
    if args.preset is not None:
        check_dataset_for_preset(args.preset, dataset_name, dataset_json, names)
    images, label_folder, eval_cases = prep.evaluation_cases(raw_folder, args.test_images, args.test_labels,
                                                             args.file_ending)
    plans_name = batch_plans_name(args.p, args.batch_size) if args.batch_size is not None else args.p
    output = os.path.abspath(args.o or default_output(dataset_name, plans_name, args.epochs, args.iterations))
    layout = Layout(output, dataset_name, args.c, plans_name, str(args.fold))
    case_ids = prep.training_case_ids(raw_folder, args.file_ending)
    splits = {n: prep.load_split(raw_folder, args.splits_pattern, n, args.fold, layout, args.make_missing_splits,
                                 args.split_seed, args.patient_regex, case_ids, eval_cases) for n in args.labeled}
    # every stage of every chain; imports every nnU-Net trainer: after the cheap checks
    trainer_modules = prep.check_trainers(check_specs(args.trainers))
    prep.check_warmups(args.trainers, args.epochs)
    finals = [layout.run_paths(1, spec).final for spec in args.trainers if spec != SELF_TRAINING]
    teachers = prep.teacher_trainers(finals) if args.checkpoint == "teacher" else []
    shared_folder = os.path.join(os.environ["nnUNet_preprocessed"], dataset_name)
    source_plans_file = os.path.join(shared_folder, args.p + ".json")
    check_same_protocol(output, protocol_key(args, dataset_name, dataset_json, plans_name,
                                             plans_facts(source_plans_file, args.c)))
    os.makedirs(output, exist_ok=True)
    say(f"{dataset_name}: N = {args.labeled} labeled x {args.trainers}, {args.epochs} x {args.iterations} iterations "
        f"on {args.device}, {len(eval_cases)} evaluation volumes; output {output}")

    from nnunetv2.configuration import default_num_processes
    np_ = args.np if args.np is not None else default_num_processes
    shared = prep.plan_and_preprocess(dataset_id, dataset_name, args.p, args.c, len(case_ids), np_,
                                      layout.file("plan_and_preprocess.log"))
    has_unlabeled = prep.preprocess_unlabeled(raw_folder, dataset_id, args.p, args.c, np_,
                                              layout.file("preprocess_unlabeled.log"))
    facts = plans_facts(source_plans_file, args.c)
    key = protocol_key(args, dataset_name, dataset_json, plans_name, facts)
    check_same_protocol(output, key)  # again, now with the plans (a re-plan changes patch size / spacing)
    write_stamp(output, key)
    own = [] if args.batch_size is None else [plans_name + ".json", facts["data_identifier"] + "_unlabeled"]
    for n, (folds, _) in splits.items():
        target = prep.install_split(layout, n, shared, folds, args.fold, args.trainers, own)
        if args.batch_size is not None:
            _install_plans_copy(args, layout, shared, target)

    bench = Benchmark(args, layout, images, label_folder, eval_cases, labels, names, teachers)
    jobs = [(n, t) for n in args.labeled for t in args.trainers]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        runs = list(pool.map(lambda job: bench.run_one(*job), jobs))

    import torch
    fold_entries = {n: folds[args.fold] for n, (folds, _) in splits.items()}
    results = {
        "protocol": {
            "dataset": dataset_id, "dataset_name": dataset_name, "configuration": args.c, "plans": plans_name,
            "source_plans": args.p, "batch_size": key["batch_size"], "patch_size": facts["patch_size"],
            "spacing": facts["spacing"], "data_identifier": facts["data_identifier"],
            "inplane_downsample": key["inplane_downsample"], "preset": args.preset, "preset_options": preset_options,
            "checkpoint": args.checkpoint, "teacher_rows": sorted({r["trainer"] for r in runs
                                                                   if r.get("checkpoint") == "teacher"}),
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
    previous = layout.file("results.json")
    results = keep_earlier_rows(_load_json(previous) if os.path.isfile(previous) else None, results)
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
    run_command(lambda: run(args), (BenchmarkError,))


if __name__ == "__main__":
    entry_point()
