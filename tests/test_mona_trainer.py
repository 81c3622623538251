"""nnUNetTrainerMONA: unit checks of its pieces, then end to end on CPU with the stock commands.

(a) decoder hooks on a tiny PlainConvUNet (shapes, gating); on a trainer initialised from the
    Dataset988 plans (conftest, no run loop): every MONA term sends gradient to the student (and, for the
    terms that use it, the student head) but never to the teacher or the teacher head; the
    teacher head, class banks and NN queue round-trip through the checkpoint state exactly.
(b) nnUNetv2_train (2 epochs x 2 iterations, unlabeled labels removed) -> --c to 3 epochs ->
    nnUNetv2_predict.
"""
import io
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cmd
from nnunet_mona.modules.feature_hooks import (DecoderFeatureCollector, decoder_level_channels,
                                               decoder_level_strides)

BIN = os.path.dirname(sys.executable)
TRAINER = "nnUNetTrainerMONA_randomStart"  # end to end: the default's terms, MONA from the first epoch
MONA_TERMS = ("unsup", "unsup_dice", "contrast", "nn", "confident_fraction")
# unit checks: every term, the equivariance one included, from the first step
UNIT_TRAINER = "nnUNetTrainerMONA_equivariance"
ALL_TERMS = MONA_TERMS + ("eqv",)


def _tiny_unet():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    return PlainConvUNet(1, 3, (8, 16, 32), nn.Conv2d, 3, (1, 2, 2), 1, 3, 1, conv_bias=True,
                         norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU,
                         deep_supervision=True)


def test_feature_hooks_shapes_and_gating():
    net = _tiny_unet()
    collector = DecoderFeatureCollector(net)
    x = torch.randn(2, 1, 32, 32)
    net(x)  # gated off: nothing kept
    assert collector._maps == {}
    with pytest.raises(RuntimeError):
        collector.pop()
    with collector.collecting():
        out = net(x)
        maps = collector.pop()
    assert [tuple(m.shape) for m in maps] == [(2, 32, 8, 8), (2, 16, 16, 16), (2, 8, 32, 32)]
    assert decoder_level_channels(net) == [32, 16, 8]
    assert decoder_level_strides(net, [[1, 1], [2, 2], [2, 2]]) == [[4, 4], [2, 2], [1, 1]]
    assert maps[-1].requires_grad and isinstance(out, list)
    net(x)  # off again after the block
    assert collector._maps == {}
    collector.remove()
    with collector.collecting():
        net(x)
    assert collector._maps == {}


# ---------------------------------------------------------------- trainer fixtures (dataset: conftest, fold 0)
def _make_trainer(pre, name=UNIT_TRAINER, configuration="2d", plans=None):
    from nnunet_mona.trainers.ready_trainer import make_trainer
    return make_trainer(name, pre, configuration=configuration, plans=plans,
                        class_overrides={"supervised_warmup_fraction": 0.0})


def _fake_step(trainer, seed=0):
    """The train_step data flow up to the loss terms, on random tensors (no loaders, no run loop)."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(2, 1, 64, 64, generator=g)
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, 8:40, 8:40], target[:, :, 16:30, 16:30], target[:, :, 44:60, 44:60] = 1, 2, 3
    unlabeled = {"data_weak": torch.randn(2, 1, 64, 64, generator=g), "valid_mask": torch.ones(2, 1, 64, 64,
                                                                                                dtype=torch.bool)}
    unlabeled["data_strong"] = unlabeled["data_weak"] + 0.1
    trainer._labeled_images = data
    with trainer.student_features.collecting():
        teacher_out = trainer.teacher_predict(unlabeled["data_weak"])
        student_input = trainer.make_student_unlabeled_input(unlabeled, teacher_out)
        output = trainer.network(torch.cat((data, student_input["image"]), 0))
        terms = trainer.compute_unlabeled_losses([o[2:] for o in output], student_input, unlabeled,
                                                 [o[:2] for o in output], [target])
    return terms


@pytest.fixture(scope="module")
def unit_trainer(hidden_label_dataset):
    torch.manual_seed(0)  # network init, mixing and warps draw from the global generator
    trainer = _make_trainer(hidden_label_dataset["pre"])
    # a random teacher is never confident: open the thresholds so every term is non-trivial
    trainer.unsup_threshold = 0.0
    trainer.contrast_positive_threshold = 0.0
    trainer.eqv_confidence_threshold = 0.0
    trainer.mona_state["nn_queue"].enqueue(torch.randn(10, trainer.head_out_channels))
    return trainer


def test_each_term_trains_student_and_head_only(unit_trainer):
    tr = unit_trainer
    terms = _fake_step(tr)
    assert set(terms) == set(ALL_TERMS)
    assert not terms["confident_fraction"].requires_grad
    student = list(tr.network.parameters())
    head = list(tr.auxiliary_modules.parameters())
    frozen = list(tr.teacher.parameters()) + list(tr.mona_state["teacher_head"].parameters())
    assert all(not p.requires_grad for p in frozen)
    for name in ("unsup", "unsup_dice", "contrast", "nn", "eqv"):
        value = terms[name]
        assert torch.isfinite(value) and value.item() > 0, (name, value)
        for p in student + head:
            p.grad = None
        value.backward(retain_graph=True)
        student_grad = any(p.grad is not None and p.grad.abs().sum() > 0 for p in student)
        # the nn pull trains the predictor only (nn_gradient_to_network False): a collapsed
        # representation would satisfy it, so it must not reach the decoder
        assert student_grad == (name != "nn"), name
        head_grad = any(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
        assert head_grad == (name in ("contrast", "nn")), name  # unsup/eqv do not use the head
        if name == "nn":  # only its own global predictor: the contrast's head and pixel predictor are untouched
            for shared in ("head", "predictor"):
                assert all(p.grad is None or p.grad.abs().sum() == 0
                           for p in tr.auxiliary_modules[shared].parameters()), shared
            assert any(p.grad is not None and p.grad.abs().sum() > 0
                       for p in tr.auxiliary_modules["nn_predictor"].parameters())
        assert all(p.grad is None for p in frozen), name


def test_banks_queue_and_teacher_head_round_trip(unit_trainer, hidden_label_dataset):
    tr = unit_trainer
    for seed in range(2):
        _fake_step(tr, seed)
        tr.after_optimizer_step({})
    state = tr.mona_state.state_dict()
    assert sum(tr.mona_state["class_bank"].sizes()) > 0
    assert len(tr.mona_state["nn_queue"]) == 10 + 2 * 2
    assert int(state["teacher_head.num_updates"]) == 2
    buffer = io.BytesIO()
    torch.save(tr.extra_checkpoint_state(), buffer)
    buffer.seek(0)
    other = _make_trainer(hidden_label_dataset["pre"])
    assert sum(other.mona_state["class_bank"].sizes()) == 0
    other.load_extra_checkpoint_state(torch.load(buffer, weights_only=False))
    restored = other.mona_state.state_dict()
    assert restored.keys() == state.keys()
    for k in state:
        assert state[k].dtype == restored[k].dtype and torch.equal(state[k], restored[k]), k
    assert other.mona_state["class_bank"].sizes() == tr.mona_state["class_bank"].sizes()


def test_plans_batch_is_split_and_half_the_unlabeled_batch_is_warped(unit_trainer, hidden_label_dataset):
    from nnunet_mona.augment.warps import warp
    tr = unit_trainer
    plans_batch = tr.configuration_manager.batch_size
    # MONA: the plans' batch of labeled patches (as plain nnU-Net) + half of it unlabeled
    assert tr.batch_size == plans_batch and tr.unlabeled_batch_size == max(2, round(plans_batch / 2))
    assert [tr._part_batch_size(b, 0.5) for b in (1, 2, 3, 4, 5, 56)] == [2, 2, 2, 2, 2, 28]

    tr.labeled_batch_fraction = tr.unlabeled_batch_fraction = 1.0  # instance override: B + B
    try:
        tr._set_batch_size_and_oversample()
        assert tr.batch_size == plans_batch and tr.unlabeled_batch_size == plans_batch
    finally:
        del tr.labeled_batch_fraction, tr.unlabeled_batch_fraction
        tr._set_batch_size_and_oversample()
    assert tr.batch_size == plans_batch

    assert [tr.num_warped(b) for b in (1, 2, 3, 4, 8)] == [1, 1, 2, 2, 4]
    g = torch.Generator().manual_seed(1)
    weak = torch.randn(4, 1, 64, 64, generator=g)
    unlabeled = {"data_weak": weak, "data_strong": weak + 0.1, "valid_mask": torch.ones(4, 1, 64, 64, dtype=torch.bool)}
    teacher_out = super(type(tr), tr).teacher_predict(weak)  # plain teacher outputs, no labeled part
    student_input = tr.make_student_unlabeled_input(unlabeled, teacher_out)
    assert student_input["num_warped"] == 2 and student_input["image"].shape[0] == 4 + 2
    expected = warp(student_input["image"][:2], student_input["warp_grid"])
    assert torch.allclose(student_input["image"][4:], expected)


@pytest.mark.parametrize("name", ["nnUNetTrainerMONA", "nnUNetTrainerMONA_noContrast", "nnUNetTrainerMONA_noNN",
                                  "nnUNetTrainerMONA_equivariance", "nnUNetTrainerMONA_paperRecipe",
                                  "nnUNetTrainerMONA_cutout", "nnUNetTrainerMONA_classmix",
                                  "nnUNetTrainerMONA_linearHead_contrast01", "nnUNetTrainerMONA_noAlignment"])
def test_variants_compute_their_terms(hidden_label_dataset, name):
    """Each variant computes exactly the terms it logs (loss_term_names follows its switches)."""
    torch.manual_seed(0)
    trainer = _make_trainer(hidden_label_dataset["pre"], name)
    trainer.contrast_positive_threshold = 0.0
    terms = _fake_step(trainer)
    assert set(terms) == set(trainer.loss_term_names)
    assert all(torch.isfinite(v) for v in terms.values())


def test_linear_head_variant_maps_decoder_features_linearly(hidden_label_dataset):
    """_linearHead_contrast01: head and predictor are affine maps of the decoder features (no ReLU anywhere), the
    default's are not; its contrast weight is 0.1."""
    linear = _make_trainer(hidden_label_dataset["pre"], "nnUNetTrainerMONA_linearHead_contrast01")
    default = _make_trainer(hidden_label_dataset["pre"], "nnUNetTrainerMONA")
    for trainer in (linear, default):
        trainer.initialize()

    def relus(trainer, name):
        return sum(isinstance(m, torch.nn.ReLU) for m in trainer.auxiliary_modules[name].modules())
    assert relus(linear, "head") == relus(linear, "predictor") == 0
    assert relus(default, "head") > 0 and relus(default, "predictor") > 0
    assert linear.loss_weights["contrast"] == 0.1 and default.loss_weights["contrast"] == 0.01


def test_default_computes_no_equivariance_term_and_warps_nothing(hidden_label_dataset):
    """The default MONA has no equivariance term (docs/results.md: it cost Dice at the largest budget): no
    warped copies reach the student, no eqv term is computed; the _equivariance variant has both."""
    torch.manual_seed(0)
    default = _make_trainer(hidden_label_dataset["pre"], "nnUNetTrainerMONA")
    default.contrast_positive_threshold = 0.0
    terms = _fake_step(default)
    assert set(terms) == set(MONA_TERMS)
    weak = torch.randn(4, 1, 64, 64)
    unlabeled = {"data_weak": weak, "data_strong": weak + 0.1, "valid_mask": torch.ones(4, 1, 64, 64, dtype=torch.bool)}
    for trainer, warped in ((default, 0), (_make_trainer(hidden_label_dataset["pre"]), 2)):
        teacher_out = super(type(trainer), trainer).teacher_predict(weak)
        student_input = trainer.make_student_unlabeled_input(unlabeled, teacher_out)
        assert student_input.get("num_warped", 0) == warped and student_input["image"].shape[0] == 4 + warped


def test_3d_configuration_is_refused(hidden_label_dataset):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    plans = load_json(os.path.join(hidden_label_dataset["pre"], "nnUNetPlans.json"))
    fake_3d = dict(plans["configurations"]["2d"], patch_size=[8, 64, 64])
    plans["configurations"]["3d_fullres"] = fake_3d
    with pytest.raises(RuntimeError, match="2D-only"):
        _make_trainer(hidden_label_dataset["pre"], configuration="3d_fullres", plans=plans)


# ---------------------------------------------------------------- end to end
def _budget_env(epochs, iterations=2):
    env = os.environ.copy()
    env.update({"nnUNet_mona_epochs": str(epochs), "nnUNet_mona_iterations": str(iterations),
                "nnUNet_mona_val_iterations": "1"})
    return env


@pytest.fixture(scope="module")
def trained_mona(hidden_label_dataset):
    ds = hidden_label_dataset
    fold = os.path.join(ds["results"], ds["name"], f"{TRAINER}__nnUNetPlans__2d", "fold_0")
    run_cmd([os.path.join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", "0", "-tr", TRAINER, "-device", "cpu"],
            env=_budget_env(2))
    first = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    run_cmd([os.path.join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", "0", "-tr", TRAINER, "-device", "cpu",
             "--c"], env=_budget_env(3))
    second = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    return {"ds": ds, "fold": fold, "first": first, "second": second}


def test_training_logs_every_mona_term(trained_mona):
    fold, first, second = trained_mona["fold"], trained_mona["first"], trained_mona["second"]
    assert first["trainer_name"] == TRAINER and second["current_epoch"] == 3
    for name in ("sup",) + MONA_TERMS:
        values = second["logging"][f"train_{name}"]
        assert len(values) == 3 and np.all(np.isfinite(values)), (name, values)
        assert values[:2] == first["logging"][f"train_{name}"], name  # resume kept the history
    logs = sorted(f for f in os.listdir(fold) if f.startswith("training_log"))
    text = "".join(open(os.path.join(fold, f)).read() for f in logs)
    for name in MONA_TERMS:
        assert f"'{name}'" in text, name
    assert "Unlabeled pool: 8 cases" in text


def test_resume_restores_banks_queue_and_teacher_head(trained_mona):
    first, second = trained_mona["first"]["semi_supervised"]["mona"], trained_mona["second"]["semi_supervised"]["mona"]
    # 2 x 2 steps, then 1 x 2 more: the EMA counters and the FIFO fill levels continue
    assert int(first["teacher_head.num_updates"]) == 4 and int(second["teacher_head.num_updates"]) == 6
    per_step = int(first["nn_queue.num_filled"]) // 4
    assert per_step >= 1 and int(second["nn_queue.num_filled"]) == min(36, 6 * per_step)
    bank_keys = [k for k in first if k.startswith("class_bank.") and k.endswith("num_filled")]
    before = [int(first[k]) for k in bank_keys]
    after = [int(second[k]) for k in bank_keys]
    assert sum(before) > 0 and sum(after) > sum(before) and all(a >= b for a, b in zip(after, before))


def test_predict(trained_mona, tmp_path):
    ds = trained_mona["ds"]
    images = os.path.join(ds["raw"], ds["name"], "imagesTs")
    run_cmd([os.path.join(BIN, "nnUNetv2_predict"), "-i", images, "-o", str(tmp_path), "-d", str(ds["id"]),
             "-c", "2d", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
             "--disable_progress_bar"])
    predicted = sorted(p for p in os.listdir(tmp_path) if p.endswith(".nii.gz"))
    assert predicted == sorted(f"{c}.nii.gz" for c in ds["roles"]["test"])
