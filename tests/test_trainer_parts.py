"""The seams of the semi-supervised base class, each on a light stand-in instead of a whole nnU-Net trainer: the
random streams that --c restores, the teacher's prediction pipeline, and the per-epoch reduction of loss terms."""
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.utilities.helpers import dummy_context

from nnunet_mona.trainers.epoch_diagnostics import EpochDiagnosticsMixin
from nnunet_mona.trainers.random_streams import RandomStreamsMixin
from nnunet_mona.trainers.teacher_pipeline import TeacherPipelineMixin


# ------------------------------------------------------------------------------------------------ random streams
class _Streams(RandomStreamsMixin):
    def __init__(self):
        self.local_rank = 0
        loader = SimpleNamespace(rs=np.random.RandomState(0))
        self.dataloader_train = SingleThreadedAugmenter(loader, None)
        self.dataloader_val = None  # e.g. worker-process loaders: not ours to restore
        self.dataloader_unlabeled = SingleThreadedAugmenter(SimpleNamespace(rs=np.random.RandomState(1)), None)


def _draws(streams):
    loaders = streams._in_process_loaders()
    return (random.random(), float(np.random.rand()), float(torch.rand(1)), [float(dl.rs.rand()) for dl in loaders])


def test_random_state_round_trip_continues_every_stream_exactly():
    streams = _Streams()
    streams.seed_in_process_loaders(7)
    _draws(streams)
    saved = streams.random_state()
    expected = _draws(streams)
    _draws(streams)  # the run goes on, then is resumed from the checkpoint
    streams.set_random_state(saved)
    assert _draws(streams) == expected


def test_loader_seeds_differ_per_loader_and_rank():
    a, b = _Streams(), _Streams()
    b.local_rank = 1
    a.seed_in_process_loaders(7)
    b.seed_in_process_loaders(7)
    first = [dl.rs.rand() for dl in a._in_process_loaders()]
    assert first[0] != first[1] and first != [dl.rs.rand() for dl in b._in_process_loaders()]


# ------------------------------------------------------------------------------------------------ teacher pipeline
class _Teacher(TeacherPipelineMixin):
    def __init__(self):
        torch.manual_seed(0)
        self.teacher = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.distribution_alignment = None
        self.adaptive_threshold = None

    def autocast_context(self):
        return dummy_context()


def test_teacher_prediction_is_a_gradient_free_softmax_and_its_argmax():
    pipe = _Teacher()
    out = pipe.teacher_predict(torch.randn(2, 1, 8, 8))
    assert out["probs"].shape == (2, 3, 8, 8) and out["pseudo_label"].shape == (2, 8, 8)
    assert torch.allclose(out["probs"].sum(1), torch.ones(2, 8, 8), atol=1e-6)
    assert torch.equal(out["pseudo_label"], out["probs"].argmax(1))
    assert torch.equal(out["confidence"], out["probs"].max(1).values)
    assert not out["probs"].requires_grad and out["probs"].dtype == torch.float32


def test_default_student_input_is_the_strong_view_with_the_weak_views_targets():
    pipe = _Teacher()
    weak, strong = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    valid = torch.rand(2, 1, 8, 8) > 0.5
    teacher_out = pipe.teacher_predict(weak)
    student = pipe.make_student_unlabeled_input({"data_weak": weak, "data_strong": strong, "valid_mask": valid},
                                                teacher_out)
    assert torch.equal(student["image"], strong) and torch.equal(student["valid"], valid[:, 0])
    assert torch.equal(student["pseudo_label"], teacher_out["pseudo_label"])
    assert pipe.pseudo_label_threshold(teacher_out["pseudo_label"], 0.9) == 0.9  # no adaptive thresholds


# ------------------------------------------------------------------------------------------------ epoch diagnostics
class _Logger:
    def __init__(self):
        self.logged = {}

    def log(self, key, value, epoch):
        self.logged[key] = value


class _Diagnostics(EpochDiagnosticsMixin):
    def __init__(self):
        self.all_term_names = ["sup", "unsup", "skipped_steps"]
        self.is_ddp, self.current_epoch, self.logger = False, 0, _Logger()


def test_epoch_means_skip_nan_steps_and_skipped_steps_are_counted():
    diag = _Diagnostics()
    nan = np.array(np.nan)
    steps = [{"loss": np.array(1.0), "sup": np.array(0.5), "unsup": np.array(0.2), "skipped_steps": np.array(0.0)},
             {"loss": nan, "sup": nan, "unsup": nan, "skipped_steps": np.array(1.0)},  # a skipped step
             {"loss": np.array(3.0), "sup": np.array(1.5), "unsup": np.array(0.4), "skipped_steps": np.array(0.0)}]
    diag.on_train_epoch_end(steps)
    logged = diag.logger.logged
    assert logged["train_losses"] == pytest.approx(2.0)
    assert [v for k, v in logged.items() if "skipped_steps" in k] == [1.0]
    assert [v for k, v in logged.items() if k.endswith("unsup")] == [pytest.approx(0.3)]


def test_a_term_never_finite_in_an_epoch_logs_nan():
    diag = _Diagnostics()
    nan = np.array(np.nan)
    diag.on_train_epoch_end([{"loss": np.array(1.0), "sup": np.array(1.0), "unsup": nan,
                              "skipped_steps": np.array(0.0)}])
    assert [math.isnan(v) for k, v in diag.logger.logged.items() if k.endswith("unsup")] == [True]
