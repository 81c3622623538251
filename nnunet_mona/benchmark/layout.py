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
                                               layout for its later stages, kept apart from the rows that train
                                               B alone (nnU-Net names its results folder by trainer); its first
                                               stage A is the same training as A's own row and lives there
                                               (labeled_N/nnUNet_results), trained once for both; a first
                                               stage SelfTraining is the SelfTraining row (self_training/)
        self_training/                         the SelfTraining row (:mod:`nnunet_mona.benchmark.self_training`):
                                               its own nnUNet_preprocessed (pseudo-labels) and the same layout;
                                               its first model is the plain row's (labeled_N/nnUNet_results)
      benchmark_protocol.json                  the settings this folder was made with (protocol_guard)
      results.json, results.md, results.png

``--checkpoint teacher`` predicts a semi-supervised trainer's EMA teacher (``checkpoint_final_teacher.pth``) into
``predictions/T__teacher``, ``metrics/T__teacher.json``, ... next to the student's files.

To use a trained model later with the stock commands, point ``nnUNet_results`` at ``OUTPUT/labeled_N/nnUNet_results``.
"""
import os
from dataclasses import dataclass

from nnunet_mona.benchmark.chains import is_chain, stages
from nnunet_mona.benchmark.self_training import BASE_TRAINER, SELF_TRAINING

CHECKPOINT_FILES = {"student": "checkpoint_final.pth", "teacher": "checkpoint_final_teacher.pth"}


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

    def run_paths(self, n: int, spec: str, checkpoint: str = "student") -> "RunPaths":
        """Paths of one row (a trainer, a chain ``A+B`` or ``SelfTraining``) for ``n`` labeled patients;
        ``checkpoint`` (student / teacher) names the predicted model's files."""
        if spec == SELF_TRAINING:
            return RunPaths(self, self.labeled(n, "self_training"), BASE_TRAINER, checkpoint, own_preprocessed=True)
        base = self.labeled(n, "chains", spec) if is_chain(spec) else self.labeled(n)
        return RunPaths(self, base, spec, checkpoint)


@dataclass(frozen=True)
class RunPaths:
    """Paths of one benchmark row below ``base`` (``labeled_N`` for a single trainer, ``labeled_N/chains/<spec>``
    for a chain, ``labeled_N/self_training`` for SelfTraining, whose training reads its own ``nnUNet_preprocessed``).
    Per-stage paths take the stage's trainer name; prediction and metrics belong to the last stage and, for the
    teacher, carry a ``__teacher`` suffix."""
    layout: Layout
    base: str
    spec: str
    checkpoint: str = "student"
    own_preprocessed: bool = False

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

    def preprocessed_root(self, n: int) -> str:
        """``nnUNet_preprocessed`` of this row's trainings."""
        return self._at("nnUNet_preprocessed") if self.own_preprocessed else self.layout.preprocessed_root(n)

    @property
    def checkpoint_file(self) -> str:
        return CHECKPOINT_FILES[self.checkpoint]

    @property
    def _tag(self) -> str:
        """File name stem of the predicted model: the last stage, plus ``__teacher`` for the teacher."""
        return self.final + ("__teacher" if self.checkpoint == "teacher" else "")

    def for_checkpoint(self, checkpoint: str) -> "RunPaths":
        return RunPaths(self.layout, self.base, self.spec, checkpoint, self.own_preprocessed)

    @property
    def pseudo_label_record(self) -> str:
        return self._at("records", "pseudo_labels.json")

    @property
    def pseudo_label_log(self) -> str:
        return self._at("logs", "pseudo_labels.log")

    def fold_folder(self, stage: str) -> str:
        lay = self.layout
        return os.path.join(self.results_root, lay.dataset_name, f"{stage}__{lay.plans}__{lay.configuration}",
                            f"fold_{lay.fold}")

    def final_checkpoint(self, stage: str) -> str:
        """The stage's ``checkpoint_final.pth`` (the student; written when its training finished)."""
        return os.path.join(self.fold_folder(stage), CHECKPOINT_FILES["student"])

    def train_log(self, stage: str) -> str:
        return self._at("logs", f"train_{stage}.log")

    def train_record(self, stage: str) -> str:
        return self._at("records", f"{stage}_train.json")

    @property
    def predict_log(self) -> str:
        return self._at("logs", f"predict_{self._tag}.log")

    @property
    def predict_record(self) -> str:
        return self._at("records", f"{self._tag}_predict.json")

    @property
    def predictions(self) -> str:
        return self._at("predictions", self._tag)

    @property
    def metrics(self) -> str:
        return self._at("metrics", f"{self._tag}.json")
