"""Relational pre-training trainers (MONA stage 1, ACTION stages i-ii) and fine-tuning from them.

(a) in-process trainers on the Dataset988 plans (conftest; no run loop, random tensors):
    global / local ISD send gradient to the student and its own heads, never to the teacher or
    the teacher heads; the queues are FIFO over teacher keys and, with the teacher heads, survive
    save_checkpoint -> load_checkpoint (the --c path); the ACTION encoder stage freezes the
    decoder (a full train_step leaves it unchanged, moves the encoder) and its checkpoint is
    accepted by nnU-Net's load_pretrained_weights for stage ii.
(b) nnUNetv2_train -tr nnUNetTrainerMONAPretrain (1 epoch x 2 iterations), then
    nnUNetTrainerMONA -pretrained_weights <its checkpoint_final.pth> (1 x 2): it starts from the
    pretrained encoder. Fold 1: test_mona_trainer trains nnUNetTrainerMONA on fold 0 of the same
    dataset.
"""
import os
import sys

import numpy as np
import pytest
import torch

from conftest import run_cmd

BIN = os.path.dirname(sys.executable)
FOLD = "1"  # fold 0's nnUNetTrainerMONA output folder belongs to test_mona_trainer


def _make_trainer(pre, name="nnUNetTrainerMONAPretrain"):
    from nnunet_mona.trainers.ready_trainer import make_trainer
    return make_trainer(name, pre, fold="all")


def _fake_batches(trainer, seed=0):
    """A labeled batch (DS targets) and an unlabeled weak/strong batch of random tensors."""
    g = torch.Generator().manual_seed(seed)
    patch = trainer.configuration_manager.patch_size
    b = trainer.batch_size
    target = [torch.randint(0, 4, (b, 1, *[int(round(p * s)) for p, s in zip(patch, sc)]), generator=g).float()
              for sc in trainer._get_deep_supervision_scales()]
    labeled = {"data": torch.randn(b, 1, *patch, generator=g), "target": target}
    weak = torch.randn(trainer.unlabeled_batch_size, 1, *patch, generator=g)
    unlabeled = {"data_weak": weak, "data_strong": weak + 0.3 * torch.randn(weak.shape, generator=g),
                 "valid_mask": torch.ones(weak.shape, dtype=torch.bool)}
    return labeled, unlabeled


def _fake_terms(trainer, seed=0):
    """train_step's data flow up to the loss terms (no backward, no optimizer step)."""
    labeled, unlabeled = _fake_batches(trainer, seed)
    data = labeled["data"]
    trainer._labeled_images, trainer._teacher_step, trainer._pending = data, {}, {}
    with trainer.student_features.collecting():
        teacher_out = trainer.teacher_predict(unlabeled["data_weak"])
        student_input = trainer.make_student_unlabeled_input(unlabeled, teacher_out)
        output = trainer.network(torch.cat((data, student_input["image"]), 0))
        n = data.shape[0]
        return trainer.compute_unlabeled_losses([o[n:] for o in output], student_input, unlabeled,
                                                [o[:n] for o in output], labeled["target"])


def _fill_queues(trainer, n_images=6):
    """Anchors for the KL (an empty queue gives 0)."""
    state = trainer.relational_state
    if "global_queue" in state:
        state["global_queue"].enqueue(torch.randn(n_images, state["global_queue"].dim))
    if "local_queue" in state:
        state["local_queue"].enqueue(torch.randn(n_images * trainer.local_window()[3], state["local_queue"].dim))


@pytest.fixture(scope="module")
def unit_trainer(hidden_label_dataset):
    torch.manual_seed(0)
    trainer = _make_trainer(hidden_label_dataset["pre"])
    _fill_queues(trainer)
    return trainer


def test_geometry_and_queue_sizes(unit_trainer):
    tr = unit_trainer
    patch = list(tr.configuration_manager.patch_size)
    window, stride, pool, n_windows = tr.local_window()
    assert window == [p // 4 for p in patch] and stride == [p // 8 for p in patch] and pool == 8
    assert n_windows == 49  # 7 x 7 windows, as MONA's 64/32 px on 256^2
    capacity = tr.relational_state["global_queue"].capacity
    assert capacity == max(36, 4 * (tr.batch_size + tr.unlabeled_batch_size))
    assert tr.relational_state["local_queue"].capacity == capacity * n_windows
    assert tr.relational_state["local_queue"].dim == tr.label_manager.num_segmentation_heads * 64


def test_isd_terms_train_student_and_its_heads_only(unit_trainer):
    tr = unit_trainer
    terms = _fake_terms(tr)
    assert set(terms) == {"global_isd", "local_isd"}
    student = list(tr.network.parameters())
    heads = dict(tr.auxiliary_modules.named_parameters())
    frozen = list(tr.teacher.parameters()) + list(tr.relational_state.parameters())
    assert len(list(tr.relational_state.parameters())) > 0 and all(not p.requires_grad for p in frozen)
    for name, own_heads in (("global_isd", ("global_",)), ("local_isd", ("local_",))):
        value = terms[name]
        assert torch.isfinite(value) and value.item() > 0, (name, value)
        for p in student + list(heads.values()):
            p.grad = None
        value.backward(retain_graph=True)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student), name
        for head_name, p in heads.items():
            reached = p.grad is not None and p.grad.abs().sum() > 0
            # projector and predictor of this term get gradient, the other term's heads none
            assert reached == head_name.startswith(own_heads), (name, head_name)
        assert all(p.grad is None for p in frozen), name


def test_queues_fifo_and_checkpoint_round_trip(hidden_label_dataset, tmp_path):
    torch.manual_seed(1)
    tr = _make_trainer(hidden_label_dataset["pre"])
    queue = tr.relational_state["global_queue"]
    for seed in range(3):
        _fake_terms(tr, seed)
        pending = tr._pending["global"].clone()
        tr.after_optimizer_step({})
        assert torch.equal(queue.features[-pending.shape[0]:], pending)  # newest rows last
    per_step = tr.keys_per_step()
    assert len(queue) == min(queue.capacity, 3 * per_step)
    assert len(tr.relational_state["local_queue"]) == 3 * per_step * tr.local_window()[3]
    assert int(tr.relational_state["global_teacher_projector"].num_updates) == 3
    # overfill: FIFO drops the oldest rows
    rows = torch.randn(queue.capacity, queue.dim)
    queue.enqueue(rows)
    assert torch.equal(queue.features, rows)
    queue.enqueue(rows[:per_step] + 1)
    assert torch.equal(queue.features[:-per_step], rows[per_step:])
    # save_checkpoint -> load_checkpoint into a fresh trainer (what --c does)
    path = str(tmp_path / "checkpoint.pth")
    tr.save_checkpoint(path)
    other = _make_trainer(hidden_label_dataset["pre"])
    assert len(other.relational_state["global_queue"]) == 0
    other.load_checkpoint(path)
    state, restored = tr.relational_state.state_dict(), other.relational_state.state_dict()
    assert state.keys() == restored.keys()
    for k in state:
        assert torch.equal(state[k], restored[k]), k
    for (k, a), b in zip(tr.auxiliary_modules.state_dict().items(), other.auxiliary_modules.state_dict().values()):
        assert torch.equal(a, b), k


def test_action_encoder_stage_freezes_decoder_and_feeds_stage_two(hidden_label_dataset, tmp_path, monkeypatch):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    torch.manual_seed(2)
    tr = _make_trainer(hidden_label_dataset["pre"], "nnUNetTrainerACTIONPretrainEncoder")
    assert set(tr.auxiliary_modules) == {"global_projector", "global_predictor"}
    assert set(tr.relational_state) == {"global_teacher_projector", "global_queue"}
    encoder = dict(tr.network.encoder.named_parameters())
    encoder_ids = {id(p) for p in encoder.values()}
    decoder = {n: p for n, p in tr.network.decoder.named_parameters() if id(p) not in encoder_ids}
    assert decoder and all(not p.requires_grad for p in decoder.values())
    assert all(p.requires_grad for p in encoder.values())
    _fill_queues(tr)
    labeled, unlabeled = _fake_batches(tr)
    monkeypatch.setattr(tr, "next_unlabeled_batch", lambda: unlabeled)
    enc_before = {n: p.detach().clone() for n, p in encoder.items()}
    dec_before = {n: p.detach().clone() for n, p in decoder.items()}
    out = tr.train_step(labeled)
    # supervised weight 0: the loss is the global term alone
    assert np.isclose(float(out["loss"]), float(out["global_isd"])) and float(out["global_isd"]) > 0
    assert "local_isd" not in out
    assert all(torch.equal(p, dec_before[n]) for n, p in decoder.items())
    assert any(not torch.equal(p, enc_before[n]) for n, p in encoder.items())
    # stage ii: nnU-Net's -pretrained_weights loader accepts the stage-i checkpoint; decoder trains again
    path = str(tmp_path / "checkpoint_final.pth")
    tr.save_checkpoint(path)
    stage2 = _make_trainer(hidden_label_dataset["pre"], "nnUNetTrainerACTIONPretrain")
    assert stage2.supervised_weight == 0.5 and all(p.requires_grad for p in stage2.network.parameters())
    load_pretrained_weights(stage2.network, path)
    for k, v in tr.network.state_dict().items():
        if ".seg_layers." not in k:  # nnU-Net never transfers the 1x1 segmentation layers
            assert torch.equal(stage2.network.state_dict()[k], v), k
    # stage ii loss = 0.5 x Dice+CE + global + local
    _fill_queues(stage2)
    labeled, unlabeled = _fake_batches(stage2)
    monkeypatch.setattr(stage2, "next_unlabeled_batch", lambda: unlabeled)
    out = stage2.train_step(labeled)
    assert np.isclose(float(out["loss"]), 0.5 * float(out["sup"]) + float(out["global_isd"]) +
                      float(out["local_isd"]), rtol=1e-4)


# ---------------------------------------------------------------- end to end
def _budget_env():
    env = os.environ.copy()
    env.update({"nnUNet_mona_epochs": "1", "nnUNet_mona_iterations": "2", "nnUNet_mona_val_iterations": "1",
                "nnUNet_n_proc_DA": "0"})
    return env


def test_pretrain_then_finetune_end_to_end(hidden_label_dataset):
    ds = hidden_label_dataset
    results = os.path.join(ds["results"], ds["name"])
    pre_fold = os.path.join(results, "nnUNetTrainerMONAPretrain__nnUNetPlans__2d", f"fold_{FOLD}")
    run_cmd([os.path.join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", FOLD, "-tr", "nnUNetTrainerMONAPretrain",
             "-device", "cpu"], env=_budget_env())
    pretrained = os.path.join(pre_fold, "checkpoint_final.pth")
    ckpt = torch.load(pretrained, map_location="cpu", weights_only=False)
    for name in ("sup", "global_isd", "local_isd"):
        assert np.all(np.isfinite(ckpt["logging"][f"train_{name}"])), name
    relational = ckpt["semi_supervised"]["relational"]
    assert int(relational["global_queue.num_filled"]) > 0 and int(relational["local_queue.num_filled"]) > 0
    assert {"global_projector", "global_predictor", "local_projector", "local_predictor"} <= \
        {k.split(".")[0] for k in ckpt["semi_supervised"]["auxiliary_modules"]}

    stdout = run_cmd([os.path.join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", FOLD, "-tr", "nnUNetTrainerMONA",
                      "-device", "cpu", "-pretrained_weights", pretrained], env=_budget_env())
    assert "Loading pretrained weights from file" in stdout
    fine = torch.load(os.path.join(results, "nnUNetTrainerMONA__nnUNetPlans__2d", f"fold_{FOLD}",
                                   "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert fine["trainer_name"] == "nnUNetTrainerMONA"
    # 2 SGD steps from the pretrained encoder stay close to it; a fresh init would be unrelated
    key = "encoder.stages.0.0.convs.0.conv.weight"
    w_pre, w_fine = ckpt["network_weights"][key], fine["network_weights"][key]
    assert (w_fine - w_pre).norm() < 0.1 * w_pre.norm()
    teacher = fine["semi_supervised"]["teacher"]
    w_teacher = teacher[next(k for k in teacher if k.endswith(key))]
    assert (w_teacher - w_pre).norm() < 0.1 * w_pre.norm()  # the teacher started from the pretrained student
