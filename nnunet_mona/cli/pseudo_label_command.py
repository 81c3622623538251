"""``nnUNetv2_mona_pseudo_label``: offline self-training's middle step as a user command.

A trained nnU-Net model (normally plain ``nnUNetTrainer`` on the fold's labeled cases) predicts every unlabeled case
of the fold (the split's ``unlabeled`` list and ``imagesUnlabeled``) in the preprocessed space; the command writes a
derived preprocessed dataset under another ``nnUNet_preprocessed`` root whose ``splits_final.json`` trains the fold
on labeled + pseudo-labeled cases. Training on it with stock ``nnUNetv2_train`` (that root as
``nnUNet_preprocessed``) is offline self-training; Mean Teacher started from that model with ``-pretrained_weights``
is the recipe measured best with one labeled patient (docs/results.md). The real labels of unlabeled cases are
never read, and nothing under the original ``nnUNet_preprocessed`` is written.
"""
import os
import sys

from nnunet_mona.cli.arguments import command_parser

RECORD_NAME = "pseudo_label_record.json"


def _dataset_folders(dataset: str, trainer: str, plans: str, configuration: str, fold: int):
    """(dataset name, source preprocessed folder, model fold folder); errors say which variable or step is missing."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    if not nnUNet_preprocessed:
        raise SystemExit("nnUNet_preprocessed is not set: point it at the folder holding your preprocessed dataset")
    name = maybe_convert_to_dataset_name(dataset)
    source = os.path.join(nnUNet_preprocessed, name)
    model = get_output_folder(name, trainer, plans, configuration, fold)
    if not os.path.isfile(os.path.join(model, "checkpoint_final.pth")):
        raise SystemExit(f"No trained model at {model} (checkpoint_final.pth missing). Train it first:\n"
                         f"    nnUNetv2_train {dataset} {configuration} {fold} -tr {trainer} -p {plans}")
    if not os.path.isfile(os.path.join(source, "splits_final.json")):
        raise SystemExit(f"{source} has no splits_final.json with this fold's 'unlabeled' list; write one with "
                         f"nnUNetv2_mona_make_splits -d {dataset} ... (or preprocess imagesUnlabeled with "
                         f"nnUNetv2_mona_preprocess_unlabeled and train the model once, which writes nnU-Net's split)")
    return name, source, model


def _check_target(output_root: str, source: str, name: str, overwrite: bool) -> str:
    """The derived dataset folder ``<output_root>/<name>``, refused when it would touch the original dataset or
    replace a folder this command did not write (unless ``overwrite``)."""
    target = os.path.join(output_root, name)
    if os.path.realpath(output_root) == os.path.realpath(os.path.dirname(source)):
        raise SystemExit(f"-o {output_root} is your nnUNet_preprocessed folder: the derived dataset would replace "
                         f"the original {source}. Give another folder, e.g. -o {output_root}_pseudo")
    if os.path.exists(target) and not os.path.isfile(os.path.join(target, RECORD_NAME)) and not overwrite:
        raise SystemExit(f"{target} exists and was not written by this command; nothing changed. Choose another "
                         f"-o, or pass --overwrite to replace it")
    return target


def entry_point(argv=None) -> None:
    import torch
    parser = command_parser(
        "nnUNetv2_mona_pseudo_label",
        "Offline self-training, middle step: a trained model predicts the fold's unlabeled cases and a "
                    "derived preprocessed dataset (under -o) trains the fold on labeled + pseudo-labeled cases. "
                    "The original preprocessed dataset is not changed.")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-o", required=True, help="nnUNet_preprocessed root for the derived dataset (not yours)")
    parser.add_argument("-c", default="2d", help="configuration. Default: 2d")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    parser.add_argument("-f", type=int, default=0, help="fold (its split's 'unlabeled' list). Default: 0")
    parser.add_argument("-tr", default="nnUNetTrainer", help="trainer of the model that pseudo-labels. "
                                                             "Default: nnUNetTrainer")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda or cpu. Default: cuda if available")
    parser.add_argument("--disable_tta", action="store_true", help="predict without mirroring (faster)")
    parser.add_argument("--overwrite", action="store_true", help="replace a target folder this command did not write")
    args = parser.parse_args(argv)

    from nnunet_mona.benchmark.evaluate import save_json
    from nnunet_mona.benchmark.self_training import pseudo_label
    name, source, model = _dataset_folders(args.d, args.tr, args.p, args.c, args.f)
    output_root = os.path.abspath(args.o)
    target = _check_target(output_root, source, name, args.overwrite)
    print(f"Pseudo-labelling fold {args.f} of {name} with {model} on {args.device} -> {target}", flush=True)
    record = pseudo_label(model, source, target, args.p, args.c, args.f, args.device, not args.disable_tta,
                          progress=lambda done, total: print(f"  {done}/{total} cases", flush=True))
    save_json(record, os.path.join(target, RECORD_NAME))
    shares = ", ".join(f"{k}: {100 * v:.1f} %" for k, v in record["pseudo_label_voxel_fraction"].items())
    results = output_root + "_results"
    print(f"{record['n_pseudo_labeled_cases']} cases pseudo-labeled in {record['wall_seconds']:.0f} s (voxel share "
          f"per label: {shares}); {record['n_labeled_cases']} labeled training cases.\n"
          f"Next, self-training (its own results folder, so the first model stays):\n"
          f"    nnUNet_preprocessed={output_root} nnUNet_results={results} nnUNetv2_train {args.d} "
          f"{args.c} {args.f} -tr {args.tr} -p {args.p}\n"
          f"then Mean Teacher from that model (your own nnUNet_preprocessed again):\n"
          f"    nnUNetv2_train {args.d} {args.c} {args.f} -tr nnUNetTrainerMeanTeacher -p {args.p} -pretrained_weights "
          f"{os.path.join(results, name, f'{args.tr}__{args.p}__{args.c}', f'fold_{args.f}', 'checkpoint_final.pth')}",
          flush=True)


if __name__ == "__main__":
    entry_point(sys.argv[1:])
