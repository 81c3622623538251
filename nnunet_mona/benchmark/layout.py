"""Where the benchmark keeps everything (one output folder; nothing is written into the user's nnU-Net folders
except the stock plans / preprocessed data of the dataset itself).

Runs with different labeled counts N are kept apart by giving each N its own ``nnUNet_preprocessed`` and
``nnUNet_results`` (set in the environment of its subprocesses; nnU-Net reads them at call time)::

    OUTPUT/
      plan_and_preprocess.log
      labeled_N/
        nnUNet_preprocessed/DatasetXXX_Name/   symbolic links to the shared preprocessed dataset, plus this N's
                                               own splits_final.json (the user's splits_final.json is untouched)
        nnUNet_results/DatasetXXX_Name/T__nnUNetPlans__2d/fold_F/   stock nnU-Net training output
        logs/train_T.log, predict_T.log
        records/T_train.json, T_predict.json   wall times, peak GPU memory, epoch timing
        predictions/T/                         stock nnUNetv2_predict output for the evaluation images
        metrics/T.json                         nnUNetv2_mona_evaluate output
        chains/A+B/                            a pretraining chain A+B (:mod:`nnunet_mona.benchmark.chains`): the
                                               same nnUNet_results / logs / records / predictions / metrics
                                               layout, one training per stage, kept apart from the rows that
                                               train A or B alone (nnU-Net names its results folder by trainer)
      results.json, results.md, results.png

To use a trained model later with the stock commands, point ``nnUNet_results`` at ``OUTPUT/labeled_N/nnUNet_results``.
"""
import os
from dataclasses import dataclass

from nnunet_mona.benchmark.chains import is_chain, stages


@dataclass(frozen=True)
class Layout:
    output: str
    dataset_name: str
    configuration: str = "2d"
    plans: str = "nnUNetPlans"
    fold: str = "0"

    def labeled(self, n: int, *parts: str) -> str:
        return os.path.join(self.output, f"labeled_{n}", *parts)

    def preprocessed_root(self, n: int) -> str:
        return self.labeled(n, "nnUNet_preprocessed")

    def file(self, name: str) -> str:
        return os.path.join(self.output, name)

    def run_paths(self, n: int, spec: str) -> "RunPaths":
        """Paths of one row (a trainer or a chain ``A+B``) for ``n`` labeled patients."""
        base = self.labeled(n, "chains", spec) if is_chain(spec) else self.labeled(n)
        return RunPaths(self, base, spec)


@dataclass(frozen=True)
class RunPaths:
    """Paths of one benchmark row below ``base`` (``labeled_N`` for a single trainer, ``labeled_N/chains/<spec>``
    for a chain). Per-stage paths take the stage's trainer name; prediction and metrics belong to the last stage."""
    layout: Layout
    base: str
    spec: str

    @property
    def stages(self):
        return stages(self.spec)

    @property
    def final(self) -> str:
        return self.stages[-1]

    def _at(self, *parts: str) -> str:
        return os.path.join(self.base, *parts)

    @property
    def results_root(self) -> str:
        return self._at("nnUNet_results")

    def fold_folder(self, stage: str) -> str:
        lay = self.layout
        return os.path.join(self.results_root, lay.dataset_name, f"{stage}__{lay.plans}__{lay.configuration}",
                            f"fold_{lay.fold}")

    def train_log(self, stage: str) -> str:
        return self._at("logs", f"train_{stage}.log")

    def train_record(self, stage: str) -> str:
        return self._at("records", f"{stage}_train.json")

    @property
    def predict_log(self) -> str:
        return self._at("logs", f"predict_{self.final}.log")

    @property
    def predict_record(self) -> str:
        return self._at("records", f"{self.final}_predict.json")

    @property
    def predictions(self) -> str:
        return self._at("predictions", self.final)

    @property
    def metrics(self) -> str:
        return self._at("metrics", f"{self.final}.json")
