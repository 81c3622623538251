"""Keeps one benchmark output folder to one protocol.

A re-run resumes: steps whose outputs exist are skipped. With other settings that shape the trained models or their
predictions (budget, seed, plans / batch size, resolution of the data, trainer overrides from the environment such as
``nnUNet_mona_trainer_settings``, ...) those outputs would be reused and mixed
into a table with the new settings. The benchmark therefore writes the settings that must agree
(:func:`protocol_key`) to ``OUTPUT/benchmark_protocol.json`` before any training, and refuses a folder whose recorded
key differs (:func:`check_same_protocol`). A folder from before this check has only ``results.json``; the keys its
protocol records are compared.
"""
import json
import os
from typing import Optional

from nnunet_mona.benchmark.processes import BenchmarkError
from nnunet_mona.benchmark.evaluate import save_json

STAMP = "benchmark_protocol.json"
# environment variables that change what every trainer of a run does (its loss weights, its settings); the benchmark
# passes its environment to every training, so they belong to the protocol and to the report's header
TRAINER_OVERRIDE_VARIABLES = ("nnUNet_mona_loss_weights", "nnUNet_mona_trainer_settings")


def trainer_overrides() -> dict:
    """{variable: value} of the trainer-override variables set (non-blank) in this process's environment."""
    found = {v: os.environ.get(v, "").strip() for v in TRAINER_OVERRIDE_VARIABLES}
    return {v: value for v, value in found.items() if value}


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
           "seed": args.seed, "disable_tta": bool(args.disable_tta), "trainer_overrides": trainer_overrides()}
    key.update(facts)
    if args.batch_size is not None:
        key["batch_size"] = args.batch_size
    return key


def _recorded(output: str) -> Optional[tuple]:
    stamp, results = os.path.join(output, STAMP), os.path.join(output, "results.json")
    for path, pick in ((stamp, lambda d: d), (results, lambda d: d.get("protocol", {}))):
        if os.path.isfile(path):
            with open(path) as f:
                return path, pick(json.load(f))
    return None


def check_same_protocol(output: str, key: dict) -> None:
    """Refuse ``output`` if it records a protocol that differs from ``key`` in a setting both name."""
    found = _recorded(output)
    if found is None:
        return
    path, recorded = found
    diffs = [f"{k}: {recorded[k]!r} there, {v!r} now" for k, v in key.items()
             if k in recorded and _norm(recorded[k]) != _norm(v)]
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
