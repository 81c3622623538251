"""The trainers under nnU-Net's torch.compile path, which is on by default on CUDA.

nnU-Net compiles ``self.network`` inside ``initialize`` on CUDA only. The semi-supervised trainers
hook decoder features on the unwrapped network (MONA, ACTION, relational pretraining, MixCL): the
hooks must still fire, and the gradient still flow, through the compiled module. No GPU here, so
the compile path is forced on CPU with the ``aot_eager`` backend: it runs TorchDynamo's graph
capture and AOTAutograd (where hooks and graph breaks are handled) without generating kernels.
"""
import functools
import os

import numpy as np
import pytest
import torch

TRAINERS = ["nnUNetTrainerMONA", "nnUNetTrainerMONAPretrain", "nnUNetTrainerMixCLPretrain"]


@pytest.fixture
def compile_with_aot_eager(monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # loaders in this process
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_steps_with_compiled_network(hidden_label_dataset, compile_with_aot_eager, name):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    import nnunet_mona.trainers as trainers
    from nnunet_mona.modules.ema_teacher import unwrap_network

    pre = hidden_label_dataset["pre"]
    plans = load_json(os.path.join(pre, "nnUNetPlans.json"))
    plans["continue_training"] = False
    base = getattr(trainers, name)
    # own class name: its output folder is apart from the other modules' trainers
    compiled_cls = type(name + "_compileTest", (base,), {"_do_i_compile": lambda self: True})
    torch.manual_seed(0)
    trainer = compiled_cls(plans, "2d", 2, load_json(os.path.join(pre, "dataset.json")), device=torch.device("cpu"))
    trainer.initialize()
    assert isinstance(trainer.network, torch._dynamo.eval_frame.OptimizedModule)
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    trainer.network.train()
    trainer.set_deep_supervision_enabled(trainer.enable_deep_supervision)
    before = [p.detach().clone() for p in unwrap_network(trainer.network).parameters()]
    heads_before = [p.detach().clone() for p in trainer.auxiliary_modules.parameters()]
    for _ in range(2):
        out = trainer.train_step(next(trainer.dataloader_train))
    # every term of the method was computed (the hooked features reached the heads) and is finite
    for term in trainer.loss_term_names:
        assert term in out and np.isfinite(out[term]), (term, out)
    assert out["skipped_steps"] == 0
    # the optimizer moved the network and the heads: gradient flowed through the compiled forward
    after = list(unwrap_network(trainer.network).parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert any(not torch.equal(a, b) for a, b in zip(trainer.auxiliary_modules.parameters(), heads_before))
