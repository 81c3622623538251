"""Rows of earlier invocations into the same output folder stay in results.json / .md / .png.

A user who adds a row (``--trainers nnUNetTrainerMONA`` after a first run of plain nnU-Net and Mean Teacher) or a
labeled count expects one table of everything the folder holds, not only what the last command ran. The output
folder keeps one protocol (:mod:`nnunet_mona.benchmark.protocol_guard`), so the earlier rows were measured the same
way. A row is kept while its metrics file exists (retraining a model deletes its metrics); it is marked with the
command that measured it.
"""
import os
from typing import Optional


def _key(run: dict) -> tuple:
    return run["n_labeled"], run["trainer"], run.get("checkpoint")


def keep_earlier_rows(previous: Optional[dict], current: dict) -> dict:
    """``current`` (this invocation's results: ``protocol`` and ``runs``) plus every finished row of ``previous``
    (the folder's results.json before this invocation) that this invocation did not run and whose metrics file
    still exists. Kept rows carry ``earlier_command``; labeled counts, row names, splits, teacher rows and published
    rows of the protocol become the union of both, earlier rows first."""
    if not previous or not previous.get("runs"):
        return current
    ran = {_key(r) for r in current["runs"]}
    command = previous.get("protocol", {}).get("command")
    kept = [dict(r, earlier_command=r.get("earlier_command") or command) for r in previous["runs"]
            if r.get("status") == "ok" and _key(r) not in ran and os.path.isfile(r.get("metrics_file") or "")]
    if not kept:
        return current
    p, old = dict(current["protocol"]), previous["protocol"]
    kept_counts = {r["n_labeled"] for r in kept}
    p["labeled_counts"] = sorted(set(p["labeled_counts"]) | kept_counts)
    p["trainers"] = list(dict.fromkeys([r["trainer"] for r in kept] + list(p["trainers"])))
    p["teacher_rows"] = sorted(set(p.get("teacher_rows") or []) |
                               {r["trainer"] for r in kept if r.get("checkpoint") == "teacher"})
    p["splits"] = {**{k: v for k, v in old.get("splits", {}).items()
                      if int(k) in kept_counts}, **p["splits"]}
    merged = dict(current, protocol=p, runs=kept + list(current["runs"]))
    if "published" in current or "published" in previous:
        merged["published"] = {**previous.get("published", {}), **current.get("published", {})}
    return merged
