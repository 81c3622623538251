"""``nnUNetv2_mona_check_folds``: are a trainer's folds ready for nnU-Net's cross-validation workflow?

``nnUNetv2_find_best_configuration``, ``nnUNetv2_predict -f 0 1 2 3 4`` and ``nnUNetv2_ensemble`` each need files
per fold that only some commands write: ``checkpoint_final.pth`` (the training), ``checkpoint_final_teacher.pth``
(nnunet_mona's semi-supervised trainers, when their training ends), ``validation/`` with one prediction per
validation case of the split (the final validation) and its ``.npz`` probabilities (``--npz``), and for
``nnUNetv2_ensemble`` prediction folders with ``.npz`` files (``nnUNetv2_predict --save_probabilities``).

nnU-Net stops at the first missing file with a message that names a path, not always the command that makes it:
``nnUNetv2_predict -chk checkpoint_final_teacher.pth`` for a trainer that writes no teacher (``nnUNetTrainerBudget``,
``nnUNetTrainer``) ends in ``FileNotFoundError`` of ``fold_0/checkpoint_final_teacher.pth``, raised while it loads the
checkpoints, before it imports any trainer class (so no trainer of ours can intercept it); a fold validated
without ``--npz`` stops find_best_configuration's ensembling with "No .npz files found"; ``nnUNetv2_ensemble`` of
folders without probabilities fails on "Not all folders contain the same files" or, when none has any, writes
nothing and exits 0. This command checks every fold first and prints, per fold, what is missing and the command that
makes it. It only reads.
"""
import os
from typing import Dict, List, Optional, Sequence

from nnunet_mona.cli.arguments import command_parser, run_command

FINAL_CHECKPOINT = "checkpoint_final.pth"
TEACHER_CHECKPOINT = "checkpoint_final_teacher.pth"
DEFAULT_PLANS = "nnUNetPlans"


class FoldCheckError(RuntimeError):
    """Bad arguments of the check itself (e.g. an unknown dataset)."""


def trainer_writes_teacher(trainer_name: str) -> Optional[bool]:
    """Whether ``trainer_name`` writes ``checkpoint_final_teacher.pth`` (a semi-supervised trainer of nnunet_mona with
    ``export_teacher_checkpoint``); None when the class cannot be found."""
    from nnunet_mona.cli.ext_trainer import configure_ext_trainer_in_process
    from nnunet_mona.trainers.semi_supervised_base import nnUNetTrainerSemiSupervised

    configure_ext_trainer_in_process()
    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        cls = recursive_find_trainer_class_by_name(trainer_name)
    except Exception:  # not found, or a broken module in nnUNet_extTrainer: the check cannot tell
        return None
    return issubclass(cls, nnUNetTrainerSemiSupervised) and bool(cls.export_teacher_checkpoint)


def _train_command(dataset: str, configuration: str, fold, trainer: str, plans: str, *flags: str) -> str:
    plans_arg = [] if plans == DEFAULT_PLANS else ["-p", plans]
    return " ".join(["nnUNetv2_train", str(dataset), configuration, str(fold), "-tr", trainer, *plans_arg, *flags])


def _files(folder: str, suffix: str) -> List[str]:
    return sorted(f[:-len(suffix)] for f in os.listdir(folder) if f.endswith(suffix)) if os.path.isdir(folder) else []


def fold_problems(model_folder: str, dataset: str, configuration: str, trainer: str, plans: str = DEFAULT_PLANS,
                  folds: Sequence = (0, 1, 2, 3, 4), checkpoint: str = FINAL_CHECKPOINT, npz: bool = False,
                  val_cases: Optional[Dict[int, List[str]]] = None) -> List[str]:
    """One message per missing piece of ``model_folder`` (``nnUNet_results/DatasetXXX/<trainer>__<plans>__<cfg>``),
    each naming the fold and the command that makes what is missing.

    checkpoint: the checkpoint ``nnUNetv2_predict -chk`` will load; npz: the validation must hold ``.npz``
    probabilities (find_best_configuration's ensembling); val_cases: ``{fold: the split's val cases}`` that the
    validation must cover (None: not checked).
    """
    problems = []
    file_ending = None
    dataset_json = os.path.join(model_folder, "dataset.json")
    if os.path.isfile(dataset_json):
        import json
        with open(dataset_json) as f:
            file_ending = json.load(f).get("file_ending")
    writes_teacher = trainer_writes_teacher(trainer) if checkpoint == TEACHER_CHECKPOINT else None
    npz_flag = ("--npz",) if npz else ()
    for fold in folds:
        fold_dir = os.path.join(model_folder, f"fold_{fold}")
        where = f"fold {fold} of {trainer} ({fold_dir})"
        if not os.path.isfile(os.path.join(fold_dir, FINAL_CHECKPOINT)):
            if os.path.isfile(os.path.join(fold_dir, "checkpoint_latest.pth")):
                problems.append(f"{where}: training did not finish (no {FINAL_CHECKPOINT}, a checkpoint_latest.pth); "
                                f"continue it with `{_train_command(dataset, configuration, fold, trainer, plans, '--c', *npz_flag)}`")
            else:
                problems.append(f"{where}: not trained (no {FINAL_CHECKPOINT}); train it with "
                                f"`{_train_command(dataset, configuration, fold, trainer, plans, *npz_flag)}`")
            continue  # the training writes everything below
        if checkpoint != FINAL_CHECKPOINT and not os.path.isfile(os.path.join(fold_dir, checkpoint)):
            if checkpoint == TEACHER_CHECKPOINT and writes_teacher is False:
                problems.append(f"{where}: no {checkpoint}: {trainer} writes no teacher checkpoint (only nnunet_mona's "
                                f"semi-supervised trainers do, e.g. nnUNetTrainerMeanTeacher); predict this trainer "
                                f"with its student, the default {FINAL_CHECKPOINT} (leave out -chk)")
            elif checkpoint == TEACHER_CHECKPOINT:
                problems.append(f"{where}: no {checkpoint} (the training writes it when it ends, from the teacher "
                                f"kept in {FINAL_CHECKPOINT}); write it with "
                                f"`{_train_command(dataset, configuration, fold, trainer, plans, '--c')}`")
            else:
                problems.append(f"{where}: no {checkpoint}; pick another -chk, e.g. the default {FINAL_CHECKPOINT}")
        validation = os.path.join(fold_dir, "validation")
        validate = _train_command(dataset, configuration, fold, trainer, plans, "--val", *npz_flag)
        if not os.path.isdir(validation):
            problems.append(f"{where}: no final validation (validation/; e.g. trained with "
                            f"nnUNet_mona_skip_validation=1); run it with `{validate}`")
            continue
        predicted = _files(validation, file_ending) if file_ending else None
        if val_cases is not None and predicted is not None and fold in val_cases:
            missing = sorted(set(val_cases[fold]) - set(predicted))
            if missing:
                problems.append(f"{where}: validation/ lacks {len(missing)} of the split's validation cases "
                                f"({missing[:5]}{' ...' if len(missing) > 5 else ''}); run it again with `{validate}`")
                continue
        if npz:
            probabilities = set(_files(validation, ".npz"))
            without = [c for c in (predicted or []) if c not in probabilities]
            if not probabilities or without:
                what = "no .npz probabilities" if not probabilities else \
                    f"no .npz probabilities for {len(without)} case(s) ({without[:5]})"
                problems.append(f"{where}: validation/ has {what} (validated without --npz); write them with "
                                f"`{validate}`")
    return problems


def prediction_folder_problems(folders: Sequence[str]) -> List[str]:
    """What keeps ``nnUNetv2_ensemble -i <folders>`` from averaging every case: a folder without ``.npz``
    probabilities (predicted without ``--save_probabilities``), or cases that not every folder predicted."""
    problems, cases = [], {}
    for folder in folders:
        if not os.path.isdir(folder):
            problems.append(f"{folder}: no such folder; predict into it with `nnUNetv2_predict ... -o {folder} "
                            f"--save_probabilities`")
            continue
        cases[folder] = set(_files(folder, ".npz"))
        if not cases[folder]:
            problems.append(f"{folder}: no .npz probabilities (predicted without --save_probabilities); predict "
                            f"again into an empty folder with `nnUNetv2_predict ... -o <folder> --save_probabilities`")
    every = set().union(*cases.values()) if cases else set()
    for folder, here in cases.items():
        missing = sorted(every - here)
        if here and missing:
            problems.append(f"{folder}: no probabilities for {len(missing)} case(s) the other folders have "
                            f"({missing[:5]}); predict the same input images into every folder")
    return problems


def check_trained_models(dataset: str, configuration: str, trainers: Sequence[str], plans: str = DEFAULT_PLANS,
                         folds: Sequence = (0, 1, 2, 3, 4), checkpoint: str = FINAL_CHECKPOINT,
                         npz: bool = False) -> List[str]:
    """``fold_problems`` of each trainer's model folder in ``nnUNet_results``, with the validation cases of the
    dataset's ``splits_final.json`` (when it exists)."""
    import json

    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise FoldCheckError(str(e)) from None
    splits_file = os.path.join(str(nnUNet_preprocessed), dataset_name, "splits_final.json")
    val_cases = None
    if os.path.isfile(splits_file):
        with open(splits_file) as f:
            splits = json.load(f)
        val_cases = {k: list(s.get("val", [])) for k, s in enumerate(splits)}
    problems = []
    for trainer in trainers:
        model_folder = get_output_folder(dataset, trainer, plans, configuration)
        problems += fold_problems(model_folder, dataset, configuration, trainer, plans, folds, checkpoint, npz,
                                  val_cases)
    return problems


def _fold(value: str):
    return value if value == "all" else int(value)


def entry_point(argv=None) -> None:
    parser = command_parser(
        "nnUNetv2_mona_check_folds",
        "Check that every fold of the given trainers has what nnUNetv2_find_best_configuration (--npz), "
        "nnUNetv2_predict -f ... [-chk CHECKPOINT] and nnUNetv2_ensemble need; print per fold what is missing and "
        "the command that makes it (exit 1), or that all is there (exit 0). Reads only.")
    parser.add_argument("-d", type=str, help="dataset name or id (with -tr)")
    parser.add_argument("-c", type=str, default="2d", help="configuration. Default: 2d")
    parser.add_argument("-tr", nargs="+", default=[], help="trainers whose folds to check")
    parser.add_argument("-p", type=str, default=DEFAULT_PLANS, help=f"plans identifier. Default: {DEFAULT_PLANS}")
    parser.add_argument("-f", nargs="+", type=_fold, default=[0, 1, 2, 3, 4], help="folds. Default: 0 1 2 3 4")
    parser.add_argument("-chk", type=str, default=FINAL_CHECKPOINT,
                        help=f"checkpoint nnUNetv2_predict will load (e.g. {TEACHER_CHECKPOINT}). "
                             f"Default: {FINAL_CHECKPOINT}")
    parser.add_argument("--npz", action="store_true",
                        help="the validation must hold .npz probabilities (find_best_configuration's ensembling)")
    parser.add_argument("--predictions", nargs="+", default=[],
                        help="prediction folders to be ensembled with nnUNetv2_ensemble: check their .npz files")
    args = parser.parse_args(argv)
    if not args.tr and not args.predictions:
        parser.error("give -d and -tr (trained folds) and/or --predictions (folders to ensemble)")
    if args.tr and args.d is None:
        parser.error("-tr needs -d")

    def main() -> int:
        problems = check_trained_models(args.d, args.c, args.tr, args.p, args.f, args.chk, args.npz) \
            if args.tr else []
        problems += prediction_folder_problems(args.predictions)
        for problem in problems:
            print(f"MISSING: {problem}")
        if problems:
            print(f"{len(problems)} problem(s); run the commands above, then check again.")
            return 1
        checked = [f"folds {' '.join(map(str, args.f))} of {', '.join(args.tr)} ({args.chk}"
                   f"{', validation with .npz' if args.npz else ''})"] if args.tr else []
        checked += [f"{len(args.predictions)} prediction folder(s) with .npz"] if args.predictions else []
        print(f"OK: {'; '.join(checked)}")
        return 0

    run_command(main, (FoldCheckError,))


if __name__ == "__main__":
    entry_point()
