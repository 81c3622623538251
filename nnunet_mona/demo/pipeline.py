"""The demo's steps. Each one skips its work when its output is already there (unless ``overwrite``), so an
interrupted demo continues where it stopped. nnU-Net itself runs through its stock commands
(``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train``, ``nnUNetv2_predict``) in subprocesses."""
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from nnunet_mona.cli import configure_ext_trainer_in_process
from nnunet_mona.demo.console import DemoError, TrainingProgress, command_path, log, run_command
from nnunet_mona.demo.synthetic_dataset import LABELS, read_scanner_shifts, write_synthetic_dataset

DATASET_ID = 980
DATASET_NAME = "MonaDemo"
CONFIGURATION = "2d"
# nnU-Net's fold "all": train on every labeled case (val = train), as a user with few labels would
FOLD = "all"
MARKER = "nnunet_mona_demo.json"  # what this folder holds; written first, so an interrupted demo has it too
# folders / files the demo creates inside its work folder (the only things --overwrite deletes)
OWNED = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "predictions", "logs", "results.md",
         "results.json", "comparison.png", MARKER)


@dataclass
class DatasetSettings:
    """What ``write_synthetic_dataset`` is called with."""
    num_labeled: int
    num_unlabeled: int
    num_test: int
    size: List[int]
    num_slices: int
    seed: int
    scanner_shift: float = 0.0
    lesion_probability: float = 0.35


@dataclass
class TrainingSettings:
    """Budget of every trainer (nnUNet_mona_epochs / _iterations / _val_iterations)."""
    epochs: int
    iterations: int
    val_iterations: int


@dataclass
class DemoSettings:
    work_dir: str
    dataset: DatasetSettings
    training: TrainingSettings
    trainers: List[str]
    device: str
    tta: bool
    overwrite: bool = False
    verbose: bool = False
    num_processes: int = 2
    paths: Dict[str, str] = field(default_factory=dict)

    @property
    def dataset_folder_name(self) -> str:
        return f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"

    def path(self, *parts: str) -> str:
        return os.path.join(self.work_dir, *parts)

    @property
    def raw_dataset(self) -> str:
        return self.path("nnUNet_raw", self.dataset_folder_name)

    @property
    def preprocessed_dataset(self) -> str:
        return self.path("nnUNet_preprocessed", self.dataset_folder_name)

    def trainer_output(self, trainer: str) -> str:
        return self.path("nnUNet_results", self.dataset_folder_name, f"{trainer}__nnUNetPlans__{CONFIGURATION}",
                         f"fold_{FOLD}")

    def prediction_folder(self, trainer: str) -> str:
        return self.path("predictions", trainer)

    def log_file(self, name: str) -> str:
        return self.path("logs", name + ".log")


# ---------------------------------------------------------------------------------------------- set-up
def prepare_work_dir(s: DemoSettings) -> None:
    """Create the work folder, or check that an existing one holds this very demo (same dataset and budget).
    With ``overwrite`` everything the demo made there is deleted first (nothing else)."""
    marker = s.path(MARKER)
    if os.path.isdir(s.work_dir) and os.listdir(s.work_dir) and not os.path.isfile(marker):
        raise DemoError(f"{s.work_dir} is not empty and is not a demo folder (no {MARKER}). Nothing was changed. "
                        f"Choose another folder with -o.")
    if s.overwrite and os.path.isfile(marker):
        log(f"--overwrite: deleting the previous demo in {s.work_dir}")
        for name in OWNED:
            p = s.path(name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.isfile(p):
                os.remove(p)
    wanted = {"dataset": asdict(s.dataset), "training": asdict(s.training)}
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            existing = json.load(f)
        differences = [f"{group}.{k}: folder has {existing.get(group, {}).get(k)!r}, now {v!r}"
                       for group in wanted for k, v in wanted[group].items()
                       if existing.get(group, {}).get(k) != v]
        if differences:
            raise DemoError(f"{s.work_dir} holds a demo made with other settings:\n  - " + "\n  - ".join(differences)
                            + "\nNothing was changed. Re-run with the same settings to continue it, add --overwrite "
                              "to delete it and start again, or choose another folder with -o.")
        log(f"continuing the demo in {s.work_dir} (finished steps are skipped; --overwrite starts again)")
    os.makedirs(s.work_dir, exist_ok=True)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump(wanted, f, indent=2)


def configure_environment(s: DemoSettings) -> None:
    """nnU-Net's folders inside the work folder (this process and its children; nnU-Net reads them lazily),
    our trainers visible to nnU-Net, and small-machine defaults unless the user set them."""
    for var, sub in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                     ("nnUNet_results", "nnUNet_results")):
        os.makedirs(s.path(sub), exist_ok=True)
        os.environ[var] = s.path(sub)
    configure_ext_trainer_in_process()
    os.environ.setdefault("nnUNet_n_proc_DA", str(s.num_processes))
    os.environ.setdefault("nnUNet_def_n_proc", str(s.num_processes))
    # torch.compile costs minutes and pays off only in long runs (nnU-Net never compiles on CPU anyway)
    os.environ.setdefault("nnUNet_compile", "f")
    # OpenMP threads that spin while they wait steal the cores nnU-Net's augmentation workers need
    # (scripts/benchmark_omp_wait.py compares the two policies)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # fold 'all' validates on the training cases: minutes of worker start-up on a small CPU for nothing
    os.environ.setdefault("nnUNet_mona_skip_validation", "1")


# ---------------------------------------------------------------------------------------------- steps
def generate_dataset(s: DemoSettings) -> Dict[str, List[str]]:
    """Synthetic dataset into nnUNet_raw (skipped when dataset.json is there). Returns the case ids per role."""
    roles_file = s.path("nnUNet_raw", "demo_roles.json")
    if os.path.isfile(os.path.join(s.raw_dataset, "dataset.json")) and os.path.isfile(roles_file):
        log(f"dataset already in {s.raw_dataset}, skipped")
        with open(roles_file, encoding="utf-8") as f:
            return json.load(f)
    d = s.dataset
    roles = write_synthetic_dataset(s.path("nnUNet_raw"), dataset_id=DATASET_ID, dataset_name=DATASET_NAME,
                                    n_labeled_patients=d.num_labeled, n_unlabeled_patients=d.num_unlabeled,
                                    n_test_patients=d.num_test, n_slices=d.num_slices, size=tuple(d.size),
                                    scanner_shift=d.scanner_shift, lesion_probability=d.lesion_probability,
                                    seed=d.seed)
    with open(roles_file, "w", encoding="utf-8") as f:  # written last: the dataset is complete
        json.dump(roles, f, indent=1)
    log(f"{len(roles['labeled'])} labeled, {len(roles['unlabeled'])} unlabeled, {len(roles['test'])} test cases "
        f"({d.num_labeled}/{d.num_unlabeled}/{d.num_test} patients x 2 frames, {d.num_slices} slices of "
        f"{d.size[0]}x{d.size[1]}) in {s.raw_dataset}")
    return roles


def scanner_groups(s: DemoSettings, test_cases: List[str]) -> Optional[dict]:
    """The test cases split by the distance of the scanner that imaged them, for a second Dice table: near
    (shift below half of ``--scanner_shift``) and far. None for a single-scanner dataset."""
    shifts = read_scanner_shifts(s.raw_dataset)
    if not shifts:
        return None
    half = s.dataset.scanner_shift / 2
    cases = {"near": [c for c in test_cases if shifts.get(c, 0.0) < half],
             "far": [c for c in test_cases if shifts.get(c, 0.0) >= half]}
    titles = {"near": "near", "far": "far"}
    note = (f"Test cases by the scanner that imaged them: near = scanner shift below {half:g} "
            f"({len(cases['near'])} cases), far = {half:g} to {s.dataset.scanner_shift:g} ({len(cases['far'])} "
            f"cases); the labeled patients' scanner is at 0 (synthetic_dataset.seen_by_scanner).")
    return {"titles": titles, "cases": cases, "note": note}


def plan_and_preprocess(s: DemoSettings) -> None:
    """``nnUNetv2_plan_and_preprocess -d ID -c 2d`` (skipped when plans and preprocessed data exist)."""
    plans = os.path.join(s.preprocessed_dataset, "nnUNetPlans.json")
    data = os.path.join(s.preprocessed_dataset, f"nnUNetPlans_{CONFIGURATION}")
    n_expected = len([f for f in os.listdir(os.path.join(s.raw_dataset, "labelsTr")) if f.endswith(".nii.gz")])
    if os.path.isfile(plans) and os.path.isdir(data) and \
            len([f for f in os.listdir(data) if f.endswith(".pkl")]) == n_expected:
        log("already planned and preprocessed, skipped")
        return
    run_command([command_path("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", CONFIGURATION,
                 "-np", str(s.num_processes), "-npfp", str(s.num_processes), "--no_pbar"],
                s.log_file("plan_and_preprocess"), echo=_echo_all if s.verbose else None)
    log(f"plans: {plans}")


def preprocess_unlabeled(s: DemoSettings) -> None:
    """``nnUNetv2_mona_preprocess_unlabeled -d ID -c 2d`` (it resumes by itself and skips finished cases)."""
    run_command([command_path("nnUNetv2_mona_preprocess_unlabeled"), "-d", str(DATASET_ID), "-c", CONFIGURATION,
                 "-np", str(s.num_processes), "--no_pbar"], s.log_file("preprocess_unlabeled"),
                echo=_echo_all if s.verbose else _echo_prefixed("  "))


def train(s: DemoSettings, trainer: str) -> bool:
    """``nnUNetv2_train ID 2d 0 -tr trainer`` with the demo's budget; continues an interrupted run (``--c``).
    Skipped when ``checkpoint_final.pth`` exists. Returns True if it trained."""
    out = s.trainer_output(trainer)
    if os.path.isfile(os.path.join(out, "checkpoint_final.pth")):
        log(f"{trainer} already trained ({out}), skipped")
        return False
    cmd = [command_path("nnUNetv2_train"), str(DATASET_ID), CONFIGURATION, FOLD, "-tr", trainer,
           "-device", s.device]
    if os.path.isfile(os.path.join(out, "checkpoint_latest.pth")):
        cmd.append("--c")
        log(f"continuing the interrupted training of {trainer}")
    env = dict(os.environ)
    env.update({"nnUNet_mona_epochs": str(s.training.epochs), "nnUNet_mona_iterations": str(s.training.iterations)})
    env.setdefault("nnUNet_mona_val_iterations", str(s.training.val_iterations))
    prefix = f"[{trainer.replace('nnUNetTrainer', '') or trainer}]"
    echo = _echo_prefixed(prefix + " ") if s.verbose else TrainingProgress(prefix, s.training.epochs)
    log(f"{' '.join(cmd)}   (log: {s.log_file('train_' + trainer)})")
    run_command(cmd, s.log_file("train_" + trainer), env=env, echo=echo)
    # predictions of an older model of this trainer are stale now
    if os.path.isdir(s.prediction_folder(trainer)):
        shutil.rmtree(s.prediction_folder(trainer))
    return True


def predict(s: DemoSettings, trainer: str, test_cases: List[str]) -> str:
    """``nnUNetv2_predict`` of imagesTs with ``trainer`` (skipped when every test case is predicted).
    Returns the prediction folder."""
    out = s.prediction_folder(trainer)
    if os.path.isdir(out) and all(os.path.isfile(os.path.join(out, c + ".nii.gz")) for c in test_cases):
        log(f"{trainer}: test cases already predicted ({out}), skipped")
        return out
    cmd = [command_path("nnUNetv2_predict"), "-i", os.path.join(s.raw_dataset, "imagesTs"), "-o", out,
           "-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", FOLD, "-tr", trainer, "-device", s.device,
           "--continue_prediction"]
    if s.device == "cpu":
        # 0/0: nnU-Net predicts in this one process; worker processes (each importing torch and nnU-Net) would cost
        # more than they save for a few small cases on a small CPU
        cmd += ["-npp", "0", "-nps", "0", "--disable_progress_bar"]
    if not s.tta:
        cmd.append("--disable_tta")
    log(" ".join(cmd))
    run_command(cmd, s.log_file("predict_" + trainer), echo=_echo_all if s.verbose else None)
    return out


def class_names(s: "DemoSettings" = None) -> Dict[int, str]:
    """{label value: name} of the foreground classes: those of the demo's dataset.json when ``s`` is given and
    the dataset exists (a dataset without lesions has no lesion class), else every class the generator knows."""
    labels = LABELS
    if s is not None and os.path.isfile(os.path.join(s.raw_dataset, "dataset.json")):
        with open(os.path.join(s.raw_dataset, "dataset.json"), encoding="utf-8") as f:
            labels = json.load(f)["labels"]
    return {v: k for k, v in sorted(labels.items(), key=lambda kv: kv[1]) if v > 0}


# ---------------------------------------------------------------------------------------------- echo helpers
def _echo_all(line: str) -> str:
    return line


def _echo_prefixed(prefix: str):
    return lambda line: prefix + line
