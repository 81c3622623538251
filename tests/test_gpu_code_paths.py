"""The trainers under the two code paths nnU-Net takes only on CUDA: torch.compile and autocast.

(a) torch.compile.
nnU-Net compiles ``self.network`` inside ``initialize`` on CUDA only. The semi-supervised trainers
hook decoder features on the unwrapped network (MONA, ACTION, relational pretraining, MixCL): the
hooks must still fire, and the gradient still flow, through the compiled module. No GPU here, so
the compile path is forced on CPU with the ``aot_eager`` backend: it runs TorchDynamo's graph
capture and AOTAutograd (where hooks and graph breaks are handled) without generating kernels.

(b) mixed precision. On CUDA the forward and the losses run under fp16 autocast, with fp16 memory
banks. Here CPU bf16 autocast stands in: an op that mixes half- and full-precision tensors outside
autocast's casting rules, or a loss that needs fp32 and does not ask for it, fails or goes
non-finite the same way.
"""
import functools

import numpy as np
import pytest
import torch

TRAINERS = ["nnUNetTrainerMONA_randomStart", "nnUNetTrainerMONAPretrain", "nnUNetTrainerMixCLPretrain"]


@pytest.fixture
def compile_with_aot_eager(monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # loaders in this process
    yield
    torch._dynamo.reset()


def _trainer(dataset, name, suffix, overrides):
    import nnunet_mona.trainers as trainers
    from nnunet_mona.trainers.ready_trainer import make_trainer, start_loaders
    # own class name: its output folder is apart from the other modules' trainers
    cls = type(name + suffix, (getattr(trainers, name),), overrides)
    trainer = make_trainer(cls, dataset["pre"], fold=2, seed=0)
    start_loaders(trainer)
    return trainer


def _two_steps_train_everything(trainer) -> dict:
    """Two train_steps; every loss term finite, network and heads moved. Returns the last step's output."""
    from nnunet_mona.modules.ema_teacher import unwrap_network
    before = [p.detach().clone() for p in unwrap_network(trainer.network).parameters()]
    heads_before = [p.detach().clone() for p in trainer.auxiliary_modules.parameters()]
    for _ in range(2):
        out = trainer.train_step(next(trainer.dataloader_train))
    # every term of the method was computed (the hooked features reached the heads) and is finite
    for term in trainer.loss_term_names:
        assert term in out and np.isfinite(out[term]), (term, out)
    assert out["skipped_steps"] == 0 and np.isfinite(out["loss"])
    # the optimizer moved the network and the heads: gradient flowed through the forward
    after = list(unwrap_network(trainer.network).parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert any(not torch.equal(a, b) for a, b in zip(trainer.auxiliary_modules.parameters(), heads_before))
    return out


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_steps_with_compiled_network(hidden_label_dataset, compile_with_aot_eager, name):
    trainer = _trainer(hidden_label_dataset, name, "_compileTest", {"_do_i_compile": lambda self: True})
    assert isinstance(trainer.network, torch._dynamo.eval_frame.OptimizedModule)
    _two_steps_train_everything(trainer)


@pytest.mark.parametrize("name", TRAINERS + ["nnUNetTrainerACTION"])
def test_trainer_steps_under_autocast(hidden_label_dataset, monkeypatch, name):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    entered = []

    def bf16_autocast(self):
        entered.append(True)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    trainer = _trainer(hidden_label_dataset, name, "_autocastTest", {"autocast_context": bf16_autocast})
    _two_steps_train_everything(trainer)
    assert entered  # the trainer's forward really ran under autocast


class _SpyScaler:
    """Stands in for CUDA's GradScaler: records its calls; ``skip_first`` makes the first update lower the scale,
    as the real scaler does when it skipped a step for inf / NaN gradients."""

    def __init__(self, skip_first: bool):
        self.calls, self.scale_value, self.skip_first = [], 1024.0, skip_first

    def get_scale(self):
        return self.scale_value

    def scale(self, loss):
        self.calls.append("scale")
        return loss

    def unscale_(self, optimizer):
        self.calls.append("unscale_")

    def step(self, optimizer):
        self.calls.append("step")
        optimizer.step()

    def update(self):
        self.calls.append("update")
        if self.skip_first and self.calls.count("update") == 1:
            self.scale_value /= 2


def test_mixed_precision_setting_and_scaler_skip_count(hidden_label_dataset, monkeypatch):
    """The gradient scaler's skipped steps are counted (a lowered scale = a skipped step), and the setting
    ``mixed_precision: false`` bypasses both the scaler and autocast on CUDA (the fp32 check for MONA)."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    from nnunetv2.utilities.helpers import dummy_context
    trainer = _trainer(hidden_label_dataset, "nnUNetTrainerMeanTeacher_randomStart", "_scalerTest", {})
    try:
        trainer.grad_scaler = spy = _SpyScaler(skip_first=True)
        trainer.train_step(next(trainer.dataloader_train))
        trainer.train_step(next(trainer.dataloader_train))
        assert spy.calls.count("scale") == 2 and trainer.amp_skipped_steps == 1

        trainer.mixed_precision = False
        trainer.grad_scaler = spy = _SpyScaler(skip_first=False)
        before = [p.detach().clone() for p in trainer.network.parameters()]
        trainer.train_step(next(trainer.dataloader_train))
        assert spy.calls == []  # fp32: the optimizer stepped without the scaler
        assert any(not torch.equal(a, b) for a, b in zip(trainer.network.parameters(), before))

        device = trainer.device
        trainer.device = torch.device("cuda")  # only the context's choice is checked: nothing runs on it
        assert isinstance(trainer.autocast_context(), dummy_context)
        trainer.mixed_precision = True
        assert isinstance(trainer.autocast_context(), torch.autocast)
        trainer.device = device
    finally:
        from nnunet_mona.trainers.ready_trainer import finish_loaders
        finish_loaders(trainer)
