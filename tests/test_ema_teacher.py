"""EMA teacher: exact EMA arithmetic, no gradients, warm-up, buffers, wrappers, state round trip."""
import copy

import pytest
import torch
from torch import nn

from nnunet_mona.modules.ema_teacher import EMATeacher, unwrap_network


def make_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_teacher_starts_as_exact_copy_and_does_not_share_storage():
    student = make_net(0)
    teacher = EMATeacher(make_net(1), student, decay=0.9, warmup=False)
    for (n, t), s in zip(teacher.model.state_dict().items(), student.state_dict().values()):
        assert torch.equal(t, s), n
    with torch.no_grad():
        student[0].weight.add_(1.0)
    assert not torch.equal(teacher.model[0].weight, student[0].weight)


def test_update_is_exact_ema_and_buffers_are_copied():
    student = make_net(0)
    teacher = EMATeacher(make_net(1), student, decay=0.9, warmup=False)
    before = copy.deepcopy(teacher.model.state_dict())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student.train()
    student(torch.randn(2, 1, 8, 8))  # changes BatchNorm running stats
    teacher.update(student)
    s = student.state_dict()
    for name, t in teacher.model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert torch.equal(t, s[name])
        else:
            torch.testing.assert_close(t, 0.9 * before[name] + 0.1 * s[name])
    assert int(teacher.num_updates) == 1


def test_warmup_decay_schedule():
    student = make_net(0)
    teacher = EMATeacher(make_net(1), student, decay=0.99, warmup=True)
    assert teacher.current_decay() == pytest.approx(0.1)  # (1+0)/(10+0)
    for _ in range(1000):
        teacher.num_updates += 1
    assert teacher.current_decay() == pytest.approx(0.99)


def test_no_gradient_and_eval_mode():
    student = make_net(0)
    teacher = EMATeacher(make_net(1), student)
    parent = nn.ModuleDict({"teacher": teacher})
    parent.train()
    assert not teacher.training and not teacher.model.training
    out = teacher(torch.randn(2, 1, 8, 8))
    assert not out.requires_grad
    assert all(not p.requires_grad for p in teacher.model.parameters())


def test_unwrap_and_state_dict_round_trip():
    student = make_net(0)

    class Wrapper(nn.Module):  # stands in for DDP's .module
        def __init__(self, m):
            super().__init__()
            self.module = m

    teacher = EMATeacher(make_net(1), Wrapper(student), decay=0.5, warmup=False)
    assert unwrap_network(Wrapper(student)) is student
    teacher.update(Wrapper(student))
    restored = EMATeacher(make_net(2), make_net(3), decay=0.5, warmup=False)
    restored.load_state_dict(teacher.state_dict())
    assert int(restored.num_updates) == 1
    for a, b in zip(restored.model.state_dict().values(), teacher.model.state_dict().values()):
        assert torch.equal(a, b)


def test_invalid_decay():
    with pytest.raises(ValueError):
        EMATeacher(make_net(1), make_net(0), decay=1.5)
