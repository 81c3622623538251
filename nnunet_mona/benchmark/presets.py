"""Named protocols of ``nnUNetv2_mona_benchmark --preset NAME``: option values plus a check of the dataset.

A preset fills every option the command line leaves unset; options given explicitly win. Its dataset check runs
before any work (planning, preprocessing, training).

``acdc_cpu`` -- the CPU-scale ACDC protocol (a 2-core CPU, no GPU): ACDC in the SSL4MIS h5 format converted at half
in-plane resolution (``nnUNetv2_mona_convert_acdc_h5 -i ACDC -d 27 --downsample 2``; 2d plans patch 128 x 112),
plans batch 8, 3 labeled patients (``--labeled 1`` is the second setting), plain nnU-Net, Mean Teacher and MONA
without supervised warm-up (``_randomStart``: at 20 epochs a warm-up leaves too few semi-supervised epochs),
20 epochs x 50 iterations (5 validation iterations per epoch: nnU-Net's pseudo-Dice is only a progress signal
here, its 50 would cost minutes per training), seed 0, CPU, prediction without mirroring, evaluated on the 20 val
volumes.

``acdc_cpu_quarter`` -- the same protocol at a quarter of the in-plane resolution (``nnUNetv2_mona_convert_acdc_h5 -i
ACDC -d 28 --downsample 4``; 2d plans patch 64 x 56), sized for a 2-core CPU within about 90 minutes, with
two rows added: offline self-training, and Mean Teacher started from the
plain row's model (the chain ``nnUNetTrainerBudget+nnUNetTrainerMeanTeacher_randomStart``: as self-training, two
trainings, the first shared with the plain row). Rows: plain nnU-Net, self-training, Mean Teacher, MONA, plain ->
Mean Teacher.
"""
from typing import Dict, List

from nnunet_mona.benchmark.processes import BenchmarkError
from nnunet_mona.benchmark.published import is_acdc_like

PRESETS: Dict[str, dict] = {
    "acdc_cpu": {
        "d": "27", "batch_size": 8, "labeled": [3],
        "trainers": ["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher_randomStart", "nnUNetTrainerMONA_randomStart"],
        "epochs": 20, "iterations": 50, "val_iterations": 5, "device": "cpu", "disable_tta": True, "seed": 0,
    },
}
PRESETS["acdc_cpu_quarter"] = {
    **PRESETS["acdc_cpu"], "d": "28",
    "trainers": ["nnUNetTrainerBudget", "SelfTraining", "nnUNetTrainerMeanTeacher_randomStart",
                 "nnUNetTrainerMONA_randomStart", "nnUNetTrainerBudget+nnUNetTrainerMeanTeacher_randomStart"],
}
# what the dataset of a preset must be: ACDC labels (RV, MYO, LV = 1, 2, 3) and this dataset.json
# 'inplane_downsample' (written by the converters' --downsample; missing = 1)
REQUIREMENTS: Dict[str, dict] = {"acdc_cpu": {"acdc_labels": True, "inplane_downsample": 2},
                                 "acdc_cpu_quarter": {"acdc_labels": True, "inplane_downsample": 4}}

# defaults of the options a preset may set (None: decided later, e.g. --device by torch.cuda.is_available())
DEFAULTS = {"labeled": [1, 3, 7],
            "trainers": ["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher", "nnUNetTrainerMONA"],
            "epochs": None, "iterations": None, "val_iterations": None, "device": None, "disable_tta": False,
            "seed": None,
            "batch_size": None, "d": None}


def apply_preset(args) -> List[str]:
    """Fill the unset options of ``args`` from ``args.preset`` (if any), then from :data:`DEFAULTS`. Returns the
    names of the options the preset set (recorded in results.json)."""
    preset = {}
    if args.preset is not None:
        if args.preset not in PRESETS:
            raise BenchmarkError(f"Unknown preset {args.preset!r}; known: {sorted(PRESETS)}")
        preset = PRESETS[args.preset]
    used = []
    for option, default in DEFAULTS.items():
        if getattr(args, option) is None:
            if option in preset:
                setattr(args, option, preset[option])
                used.append(option)
            else:
                setattr(args, option, default)
    return used


def check_dataset_for_preset(preset: str, dataset_name: str, dataset_json: dict, class_names: List[str]) -> None:
    """A clear error unless the dataset is what the preset was made for."""
    need = REQUIREMENTS.get(preset, {})
    problems = []
    if need.get("acdc_labels") and not is_acdc_like(class_names):
        problems.append(f"its foreground labels are {class_names}, not ACDC's RV, MYO, LV (1, 2, 3)")
    if "inplane_downsample" in need:
        found = dataset_json.get("inplane_downsample", 1)
        if found != need["inplane_downsample"]:
            problems.append(f"dataset.json has inplane_downsample {found}, the preset needs "
                            f"{need['inplane_downsample']}")
    if problems:
        raise BenchmarkError(f"--preset {preset} does not fit {dataset_name}: " + "; ".join(problems) +
                             f". Convert ACDC with `nnUNetv2_mona_convert_acdc_h5 -i ACDC -d {PRESETS[preset]['d']} "
                             f"--downsample {need['inplane_downsample']}` (and pass its dataset with -d), or drop "
                             f"--preset and give the options yourself.")
