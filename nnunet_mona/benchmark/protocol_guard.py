"""Keeps one benchmark output folder to one protocol.

A re-run resumes: steps whose outputs exist are skipped. With other settings that shape the trained models or their
predictions (budget, seed, plans / batch size, resolution of the data, ...) those outputs would be reused and mixed
into a table with the new settings. The benchmark therefore writes the settings that must agree
(:func:`protocol_key`) to ``OUTPUT/benchmark_protocol.json`` before any training, and refuses a folder whose recorded
key differs (:func:`check_same_protocol`). A folder from before this check has only ``results.json``; the keys its
protocol records are compared. What a trainer does is its class name (a row per variant class), so it needs no key.

``trainer_defaults`` numbers the revision of the trainers' defaults (``DEFAULT_CHANGES``): in folders without it
(revision 1), ``nnUNetTrainerMeanTeacher``, ``nnUNetTrainerMONA`` and the variants that inherit their warm-up trained
from random weights; up to revision 2 ``nnUNetTrainerMONA`` and the variants inheriting the switch trained with the
equivariance term; up to revision 3 ``nnUNetTrainerMeanTeacher`` and the variants inheriting the switch aligned
the teacher's class distribution. A folder of an older revision with rows of a changed class is refused
(:func:`refuse_changed_defaults`): its finished rows would be skipped and shown under a name that now trains
another recipe. A folder whose rows are not affected is resumed and recorded at today's revision.

Older folders may record ``trainer_overrides``: the environment variables ``nnUNet_mona_trainer_settings`` /
``nnUNet_mona_loss_weights``, which no longer exist. A folder whose rows were trained with such an override is
refused, naming the variant classes to benchmark instead; so is a run started while one of them is set.
"""
import glob
import json
import os
from typing import List, Optional, Tuple

from nnunet_mona.benchmark.processes import BenchmarkError
from nnunet_mona.benchmark.evaluate import save_json

STAMP = "benchmark_protocol.json"
# as nnunet_mona.trainers.removed_overrides.REMOVED_VARIABLES (not imported here: that imports every trainer)
REMOVED_OVERRIDE_VARIABLES = ("nnUNet_mona_loss_weights", "nnUNet_mona_trainer_settings")
# revision -> (the attribute whose default changed, the classes it changed in, what the rows trained before, the
# variant with the old recipe). Variants that inherit the attribute from those classes changed too.
DEFAULT_CHANGES = {
    2: ("supervised_warmup_fraction", ("nnUNetTrainerMeanTeacher", "nnUNetTrainerMONA"),
        "had no supervised warm-up (today the first half of the epochs is supervised only)",
        "the _randomStart variant (e.g. nnUNetTrainerMeanTeacher_randomStart)"),
    3: ("use_equivariance", ("nnUNetTrainerMONA",),
        "had MONA's equivariance term (today it has none)",
        "nnUNetTrainerMONA_equivariance for nnUNetTrainerMONA and its _warmStart, for another variant a subclass "
        "of it with use_equivariance = True (docs/configuration.md)"),
    4: ("align_class_distribution", ("nnUNetTrainerMeanTeacher",),
        "had distribution alignment (today it has none)",
        "nnUNetTrainerMeanTeacher_warmStart for nnUNetTrainerMeanTeacher, for another variant a subclass of it with "
        "align_class_distribution = True (docs/configuration.md)"),
}
TRAINER_DEFAULTS_REVISION = max(DEFAULT_CHANGES)


def plans_facts(plans_file: str, configuration: str) -> dict:
    """Batch size, patch size, spacing and data identifier of ``configuration`` (empty if the file is missing)."""
    if not os.path.isfile(plans_file):
        return {}
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    cm = PlansManager(plans_file).get_configuration(configuration)
    return {"batch_size": int(cm.batch_size), "patch_size": [int(p) for p in cm.patch_size],
            "spacing": [float(s) for s in cm.spacing], "data_identifier": cm.data_identifier}


def protocol_key(args, dataset_name: str, dataset_json: dict, plans_name: str, facts: dict) -> dict:
    """The settings two runs in one output folder must share. Names as in results.json's ``protocol``."""
    key = {"dataset_name": dataset_name, "inplane_downsample": dataset_json.get("inplane_downsample", 1),
           "configuration": args.c, "plans": plans_name, "source_plans": args.p, "fold": args.fold,
           "epochs": args.epochs, "iterations_per_epoch": args.iterations, "val_iterations": args.val_iterations,
           "seed": args.seed, "disable_tta": bool(args.disable_tta), "trainer_defaults": TRAINER_DEFAULTS_REVISION}
    key.update(facts)
    if args.batch_size is not None:
        key["batch_size"] = args.batch_size
    return key


def _recorded_protocols(output: str) -> List[Tuple[str, dict]]:
    """(path, protocol) of ``benchmark_protocol.json`` and of ``results.json``'s 'protocol', those that exist."""
    found = []
    for name, pick in ((STAMP, lambda d: d), ("results.json", lambda d: d.get("protocol", {}))):
        path = os.path.join(output, name)
        if os.path.isfile(path):
            with open(path) as f:
                found.append((path, pick(json.load(f))))
    return found


def _recorded(output: str) -> Optional[tuple]:
    found = _recorded_protocols(output)
    return found[0] if found else None


def _trainers_of(protocol: dict) -> Optional[List[str]]:
    """Every trainer class a recorded protocol names (each stage of a chain), or None if it names none."""
    specs = protocol.get("trainer_specs") or protocol.get("trainers")
    if not specs:
        return None
    return sorted({stage.strip() for spec in specs for stage in spec.replace(" + ", "+").split("+")})


def _instead(overrides: dict, trainers: Optional[List[str]]) -> str:
    from nnunet_mona.trainers.removed_overrides import variants_for  # imports every trainer: only when needed
    variants = variants_for(overrides, trainers)
    if not variants:
        return ("no named variant class has exactly these values: write one (a subclass that sets the attributes, "
                "docs/configuration.md) and benchmark it by name")
    return "benchmark the variant classes instead: " + ", ".join(
        f"{variant} (for {trainer})" if variant != trainer else f"{trainer} itself (these are its defaults)"
        for trainer, variant in sorted(variants.items()))


def refuse_removed_overrides(output: str) -> None:
    """Refuse a run started with ``nnUNet_mona_trainer_settings`` / ``nnUNet_mona_loss_weights`` set, and an output
    folder whose recorded protocol has non-empty ``trainer_overrides`` (rows trained with those variables: their
    output folders carry the plain trainer names). Nothing is trained or overwritten."""
    now = {v: os.environ.get(v, "").strip() for v in REMOVED_OVERRIDE_VARIABLES}
    now = {v: value for v, value in now.items() if value}
    if now:
        raise BenchmarkError(f"{', '.join(f'{k}={v!r}' for k, v in now.items())}: trainer overrides from the "
                             f"environment no longer exist (every trainer would refuse to start); nothing was "
                             f"run. Unset {' '.join(now)} and {_instead(now, None)} (--trainers).")
    for path, recorded in _recorded_protocols(output):
        overrides = recorded.get("trainer_overrides") or {}
        if overrides:
            listed = "; ".join(f"{k}={v!r}" for k, v in sorted(overrides.items()))
            raise BenchmarkError(
                f"{output} holds a benchmark run trained with trainer overrides from the environment ({listed}, "
                f"recorded in {path}), which no longer exist: its rows carry the plain trainer names although they "
                f"are not those trainers' defaults. Nothing was changed there. Use another output folder (-o) and "
                f"{_instead(overrides, _trainers_of(recorded))}.")


def _trained_trainer_names(output: str) -> List[str]:
    """Trainer classes with a model folder in ``output`` (labeled_N/nnUNet_results/<dataset>/<trainer>__...)."""
    pattern = os.path.join(output, "labeled_*", "nnUNet_results", "*", "*__*")
    return sorted({os.path.basename(path).split("__")[0] for path in glob.glob(pattern) if os.path.isdir(path)})


def _inherits_changed_default(trainer: str, attribute: str, classes) -> bool:
    """Whether ``trainer`` takes ``attribute`` from one of ``classes`` (False for an unknown name: nothing to
    compare)."""
    from nnunet_mona.trainers.ready_trainer import find_trainer_class  # imports every trainer: only when needed
    try:
        cls = find_trainer_class(trainer)
    except RuntimeError:
        return False
    owner = next((c for c in cls.__mro__ if attribute in vars(c)), None)
    return owner is not None and owner.__name__ in classes


def _recorded_revision(recorded: List[Tuple[str, dict]]) -> int:
    return max(p.get("trainer_defaults", 1) for _, p in recorded)


def refuse_changed_defaults(output: str) -> None:
    """Refuse a folder of an older trainer-defaults revision (none recorded: revision 1) that holds rows of a class
    whose default has changed since. Nothing is trained or overwritten."""
    recorded = _recorded_protocols(output)
    revision = _recorded_revision(recorded) if recorded else TRAINER_DEFAULTS_REVISION
    if revision >= TRAINER_DEFAULTS_REVISION:
        return
    names = set(_trained_trainer_names(output))
    for _, protocol in recorded:
        names.update(_trainers_of(protocol) or [])
    problems = []
    for later in range(revision + 1, TRAINER_DEFAULTS_REVISION + 1):
        attribute, classes, before, old_recipe = DEFAULT_CHANGES[later]
        changed = [t for t in sorted(names) if _inherits_changed_default(t, attribute, classes)]
        if changed:
            problems.append(f"rows of {', '.join(changed)} trained when {' and '.join(classes)} {before}; the old "
                            f"recipe is {old_recipe}")
    if problems:
        raise BenchmarkError(
            f"{output} (recorded in {recorded[0][0]}) holds " + "; and ".join(problems) + ". The finished rows would "
            f"be shown under a name that now means another recipe. Nothing was changed there. Use another output "
            f"folder (-o).")


def check_same_protocol(output: str, key: dict) -> None:
    """Refuse ``output`` if it records a protocol that differs from ``key`` in a setting both name, one trained
    with the removed trainer overrides (:func:`refuse_removed_overrides`), or one whose rows' trainer defaults have
    changed since (:func:`refuse_changed_defaults`)."""
    refuse_removed_overrides(output)
    refuse_changed_defaults(output)
    found = _recorded(output)
    if found is None:
        return
    path, recorded = found
    # an older trainer-defaults revision whose rows did not change (refuse_changed_defaults) is resumed
    diffs = [f"{k}: {recorded[k]!r} there, {v!r} now" for k, v in key.items()
             if k in recorded and k != "trainer_defaults" and _norm(recorded[k]) != _norm(v)]
    if diffs:
        raise BenchmarkError(f"{output} holds a benchmark run with another protocol ({path}):\n  - " +
                             "\n  - ".join(diffs) + "\nIts trained models and predictions would be mixed with this "
                             "run's. Use another output folder (-o), or the same settings to resume it.")


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def write_stamp(output: str, key: dict) -> None:
    """Record ``key`` (merged over an earlier stamp: keys known only after planning are added)."""
    path = os.path.join(output, STAMP)
    merged = {}
    if os.path.isfile(path):
        with open(path) as f:
            merged = json.load(f)
    merged.update(key)
    save_json(merged, path)
