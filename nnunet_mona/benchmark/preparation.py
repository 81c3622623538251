"""Everything the benchmark checks and prepares before training: dataset, labels, trainers, evaluation images,
split files, stock planning / preprocessing, and the per-N ``nnUNet_preprocessed`` folders.

All checks run before any long work, so that a typo fails in seconds, not after hours of training.
"""
import contextlib
import hashlib
import io
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_mona.benchmark.chains import stage_trainer, stages
from nnunet_mona.benchmark.layout import Layout
from nnunet_mona.benchmark.processes import BenchmarkError, command_path, run_logged, say

RAW_UNLABELED = "imagesUnlabeled"


def _env_folder(variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise BenchmarkError(f"{variable} is not set. Set nnUNet_raw, nnUNet_preprocessed and nnUNet_results "
                             f"as for nnU-Net (nnU-Net's documentation: setting_up_paths.md).")
    return value


def resolve_dataset(dataset: str) -> Tuple[str, str, dict]:
    """(DatasetXXX_Name, raw dataset folder, dataset.json) or a clear error."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    raw_root = _env_folder("nnUNet_raw")
    for variable in ("nnUNet_preprocessed", "nnUNet_results"):
        _env_folder(variable)
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise BenchmarkError(f"Dataset {dataset!r} not found: {e}") from None
    raw_folder = os.path.join(raw_root, name)
    dataset_json = os.path.join(raw_folder, "dataset.json")
    if not os.path.isfile(dataset_json):
        raise BenchmarkError(f"Dataset {dataset!r}: {dataset_json} does not exist (the benchmark needs the raw "
                             f"dataset: planning and the evaluation images come from it).")
    with open(dataset_json) as f:
        return name, raw_folder, json.load(f)


def foreground_labels(dataset_json: dict) -> Tuple[List[int], List[str]]:
    """Foreground label values and names from dataset.json (region-based labels are not supported)."""
    labels, names = [], []
    for name, value in dataset_json["labels"].items():
        if isinstance(value, (list, tuple)):
            raise BenchmarkError(f"Region-based label {name!r}: {value}; the benchmark evaluates integer labels only.")
        if int(value) == 0 or name == "ignore":
            continue
        labels.append(int(value))
        names.append(name)
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    return [labels[i] for i in order], [names[i] for i in order]


def check_trainers(trainers: Sequence[str]) -> Dict[str, str]:
    """{trainer: module} via nnU-Net's own lookup (with nnUNet_extTrainer set). Fails for unknown names and for
    trainers that ignore the nnUNet_mona_* budget variables (they would train nnU-Net's full budget)."""
    from nnunet_mona.cli import configure_ext_trainer_in_process
    configure_ext_trainer_in_process()
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    if len(set(trainers)) != len(trainers):
        raise BenchmarkError(f"Duplicate trainer names in --trainers: {list(trainers)}")
    found, unknown, fixed_budget, named_epochs = {}, [], [], []
    for t in trainers:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                cls = recursive_find_trainer_class_by_name(t)
        except (RuntimeError, AssertionError):
            unknown.append(t)
            continue
        found[t] = cls.__module__
        if not cls.__module__.startswith("nnunet_mona."):
            fixed_budget.append(t)
        elif getattr(cls, "epochs_from_name", None):
            named_epochs.append(t)
    if unknown:
        raise BenchmarkError(f"Unknown trainer(s): {unknown}. nnU-Net's trainer lookup (with nnUNet_extTrainer="
                             f"{os.environ.get('nnUNet_extTrainer')}) cannot find them. Check the spelling.")
    if named_epochs:
        raise BenchmarkError(f"Trainer(s) {named_epochs} fix their epoch count by name; the benchmark sets it with "
                             f"--epochs for every row: name the trainers without the _<N>epochs suffix.")
    if fixed_budget:
        raise BenchmarkError(f"Trainer(s) {fixed_budget} do not read nnUNet_mona_epochs / nnUNet_mona_iterations and "
                             f"would train nnU-Net's own budget. For plain nnU-Net use nnUNetTrainerBudget.")
    return found


_NO_WARMUP_HINT = "nnUNetTrainerMeanTeacher_randomStart, nnUNetTrainerMONA_randomStart"


def _trainer_class(name: str) -> type:
    """nnU-Net's trainer lookup without its console output; call after :func:`check_trainers`."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    with contextlib.redirect_stdout(io.StringIO()):
        return recursive_find_trainer_class_by_name(name)


def check_warmups(specs: Sequence[str], epochs: int) -> None:
    """Refuse a row that would not train the recipe its name says: a trainer whose supervised warm-up leaves
    ``epochs`` no semi-supervised epoch (the training would shorten it), and a chain stage after the first with a
    warm-up (it starts from the previous stage's model, which already is the supervised start). Call after
    :func:`check_trainers`."""
    from nnunet_mona.trainers.supervised_warmup import supervised_warmup_epochs
    fractions = {t: getattr(_trainer_class(t), "supervised_warmup_fraction", 0.0)
                 for t in sorted({stage_trainer(s) for spec in specs for s in stages(spec)})}
    for trainer, fraction in fractions.items():
        try:
            supervised_warmup_epochs(epochs, fraction)
        except ValueError as e:
            raise BenchmarkError(f"{trainer} with --epochs {epochs}: {e}; or benchmark a variant without warm-up "
                                 f"({_NO_WARMUP_HINT})") from None
    for spec in specs:
        for stage in stages(spec)[1:]:
            if fractions[stage_trainer(stage)] > 0:
                raise BenchmarkError(
                    f"Trainer spec {spec!r}: its stage {stage} starts from the previous stage's model, yet would "
                    f"train its first {fractions[stage]:g} of the epochs supervised only again (its "
                    f"supervised_warmup_fraction). Use a variant without warm-up as that stage "
                    f"({_NO_WARMUP_HINT}).")


def teacher_trainers(trainers: Sequence[str]) -> List[str]:
    """The trainers among ``trainers`` that write ``checkpoint_final_teacher.pth`` (the semi-supervised trainers'
    ``export_teacher_checkpoint``); call after :func:`check_trainers`."""
    return [t for t in trainers if getattr(_trainer_class(t), "export_teacher_checkpoint", False)]


def evaluation_cases(raw_folder: str, images: str, labels: str, file_ending: str) -> Tuple[str, str, List[str]]:
    """(image folder, label folder, case ids with a label); every labeled case must have its image."""
    images = images if os.path.isabs(images) else os.path.join(raw_folder, images)
    labels = labels if os.path.isabs(labels) else os.path.join(raw_folder, labels)
    for folder, option in ((images, "--test_images"), (labels, "--test_labels")):
        if not os.path.isdir(folder):
            raise BenchmarkError(f"Evaluation folder not found ({option}): {folder}")
    cases = sorted(f[:-len(file_ending)] for f in os.listdir(labels) if f.endswith(file_ending))
    if not cases:
        raise BenchmarkError(f"No label files ending with {file_ending} in {labels}")
    image_files = set(os.listdir(images))
    missing = [c for c in cases if f"{c}_0000{file_ending}" not in image_files]
    if missing:
        raise BenchmarkError(f"{len(missing)} evaluation case(s) have a label but no image in {images}: {missing[:10]}")
    return images, labels, cases


def training_case_ids(raw_folder: str, file_ending: str) -> List[str]:
    labels = os.path.join(raw_folder, "labelsTr")
    return sorted(f[:-len(file_ending)] for f in os.listdir(labels) if f.endswith(file_ending))


def load_split(raw_folder: str, pattern: str, n: int, fold: int, layout: Layout, make_missing: bool, seed: int,
               patient_regex: str, case_ids: Sequence[str], eval_cases: Sequence[str]) -> Tuple[list, str]:
    """(folds, where they came from) for ``n`` labeled patients: ``raw_folder/pattern.format(n=n)``, or with
    ``make_missing`` a split made by :mod:`nnunet_mona.data.splits` (stored in the output folder, reused on resume)."""
    from nnunet_mona.data.splits import SplitsError, make_semi_supervised_splits, validate_splits
    source = os.path.join(raw_folder, pattern.format(n=n))
    generated = layout.labeled(n, "splits_generated.json")
    if os.path.isfile(source):
        path = source
    elif os.path.isfile(generated):
        path = generated
    elif make_missing:
        try:
            folds = make_semi_supervised_splits(case_ids, n, num_folds=fold + 1, seed=seed, patient_regex=patient_regex)
        except SplitsError as e:
            raise BenchmarkError(f"Cannot make a split with {n} labeled patient(s): {e}") from None
        os.makedirs(os.path.dirname(generated), exist_ok=True)
        with open(generated, "w") as f:
            json.dump(folds, f, indent=2)
        path = generated
    else:
        raise BenchmarkError(f"No split file for {n} labeled patient(s): {source} does not exist. Write it (e.g. with "
                             f"nnUNetv2_mona_make_splits, then move it there), or pass --make_missing_splits.")
    with open(path) as f:
        folds = json.load(f)
    try:
        validate_splits(folds)
    except SplitsError as e:
        raise BenchmarkError(f"{path}: {e}") from None
    if fold >= len(folds):
        raise BenchmarkError(f"{path} has {len(folds)} fold(s); --fold {fold} is not one of them.")
    entry = folds[fold]
    unknown = sorted((set(entry["train"]) | set(entry["val"]) | set(entry["unlabeled"])) - set(case_ids))
    if unknown:
        raise BenchmarkError(f"{path} fold {fold} names case(s) that are not training cases of the dataset: "
                             f"{unknown[:10]}")
    leaked = sorted((set(entry["train"]) | set(entry["unlabeled"])) & set(eval_cases))
    if leaked:
        raise BenchmarkError(f"{path} fold {fold} trains on evaluation case(s): {leaked[:10]}")
    return folds, path


def split_digest(folds: list, fold: int) -> str:
    """Short hash of one fold (changes when its train / val / unlabeled lists change)."""
    entry = {k: sorted(folds[fold][k]) for k in ("train", "val", "unlabeled")}
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:12]


def _plans_and_data(preprocessed_folder: str, plans: str, configuration: str) -> Tuple[str, Optional[str]]:
    plans_file = os.path.join(preprocessed_folder, plans + ".json")
    if not os.path.isfile(plans_file):
        return plans_file, None
    with open(plans_file) as f:
        configurations = json.load(f)["configurations"]
    if configuration not in configurations:
        raise BenchmarkError(f"Configuration {configuration!r} is not in {plans_file} ({list(configurations)})")
    identifier = configurations[configuration].get("data_identifier", f"{plans}_{configuration}")
    return plans_file, os.path.join(preprocessed_folder, identifier)


def plan_and_preprocess(dataset_id: str, dataset_name: str, plans: str, configuration: str, num_training: int,
                        num_processes: int, log_file: str) -> str:
    """Stock planning / preprocessing unless done; returns the shared preprocessed dataset folder."""
    preprocessed = os.path.join(_env_folder("nnUNet_preprocessed"), dataset_name)
    plans_file, data = _plans_and_data(preprocessed, plans, configuration)

    def complete() -> bool:
        return data is not None and os.path.isdir(data) and \
            len([f for f in os.listdir(data) if f.endswith(".pkl")]) >= num_training

    if complete():
        say(f"[skip] planning/preprocessing: {data} is complete")
        return preprocessed
    if data is None and plans != "nnUNetPlans":
        raise BenchmarkError(f"{plans_file} does not exist; plan the dataset with the planner that makes {plans!r} "
                             f"first (the benchmark only runs the default planner itself).")
    if data is None:
        cmd = [command_path("nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", configuration,
               "-np", str(num_processes), "--no_pbar"]
    else:
        cmd = [command_path("nnUNetv2_preprocess"), "-d", dataset_id, "-plans_name", plans, "-c", configuration,
               "-np", str(num_processes), "--no_pbar"]
    say(f"planning/preprocessing: {' '.join(cmd)}  (log: {log_file})")
    env = dict(os.environ)
    if env.get("nnUNet_n_proc_DA") == "0":  # nnU-Net's planner calls torch.set_num_threads(n_proc_DA), 0 fails
        env["nnUNet_n_proc_DA"] = "1"
    run_logged(cmd, log_file, env, "[preprocess]")
    plans_file, data = _plans_and_data(preprocessed, plans, configuration)
    if not complete():
        raise BenchmarkError(f"Preprocessing finished but {data} is incomplete; see {log_file}")
    return preprocessed


def preprocess_unlabeled(raw_folder: str, dataset_id: str, plans: str, configuration: str, num_processes: int,
                         log_file: str) -> bool:
    """``nnUNetv2_mona_preprocess_unlabeled`` when the raw dataset has imagesUnlabeled/ (it skips finished cases).
    Returns whether there were unlabeled images."""
    folder = os.path.join(raw_folder, RAW_UNLABELED)
    if not os.path.isdir(folder) or not os.listdir(folder):
        return False
    cmd = [command_path("nnUNetv2_mona_preprocess_unlabeled"), "-d", dataset_id, "-c", configuration, "-p", plans,
           "-np", str(num_processes), "--no_pbar"]
    say(f"preprocessing {RAW_UNLABELED}: {' '.join(cmd)}  (log: {log_file})")
    run_logged(cmd, log_file, dict(os.environ), "[unlabeled]")
    return True


def install_split(layout: Layout, n: int, shared_preprocessed: str, folds: list, fold: int, trainers: Sequence[str],
                  own_entries: Sequence[str] = ()) -> str:
    """Make ``OUTPUT/labeled_N/nnUNet_preprocessed/DatasetXXX`` (``trainers``: the trainer specs, chains included):
    links to every entry of the shared preprocessed dataset folder except its split files and ``own_entries``
    (written by the benchmark itself, e.g. a plans copy), and this N's ``splits_final.json``. Refuses to change the
    split of a folder that already holds trainings (their results would mix two splits). Returns the folder."""
    target = os.path.join(layout.preprocessed_root(n), layout.dataset_name)
    os.makedirs(target, exist_ok=True)
    for entry in sorted(os.listdir(shared_preprocessed)):
        if entry.startswith("splits_final") or entry in own_entries:
            continue
        link, source = os.path.join(target, entry), os.path.join(shared_preprocessed, entry)
        if os.path.islink(link):
            if os.readlink(link) == source:
                continue
            os.remove(link)
        elif os.path.exists(link):
            raise BenchmarkError(f"{link} exists and is not a link made by the benchmark; remove it.")
        os.symlink(source, link)
    splits_file = os.path.join(target, "splits_final.json")
    if os.path.isfile(splits_file):
        with open(splits_file) as f:
            installed = json.load(f)
        if split_digest(installed, fold) != split_digest(folds, fold) and \
                any(os.path.isdir(layout.run_paths(n, spec).fold_folder(stage))
                    for spec in trainers for stage in layout.run_paths(n, spec).stages):
            raise BenchmarkError(f"The split for {n} labeled patient(s) differs from the one the runs in "
                                 f"{layout.labeled(n)} were trained with. Use another output folder (-o).")
    with open(splits_file + ".tmp", "w") as f:
        json.dump(folds, f, indent=2)
    os.replace(splits_file + ".tmp", splits_file)
    return target
