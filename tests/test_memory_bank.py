"""FeatureQueue / ClassMemoryBank: FIFO order, capacity, state-dict round trip, fp16 storage."""
import pytest
import torch

from nnunet_mona.modules.memory_bank import ClassMemoryBank, FeatureQueue


def rows(start, n, dim=3):
    """Rows whose every entry equals their running number: easy to read back."""
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, dim)


def test_queue_fills_then_drops_oldest_first():
    q = FeatureQueue(dim=3, capacity=5)
    assert len(q) == 0 and q.features.shape == (0, 3)
    q.enqueue(rows(0, 3))
    assert torch.equal(q.features[:, 0], torch.tensor([0., 1., 2.]))
    q.enqueue(rows(3, 4))  # 7 rows seen, capacity 5: rows 0 and 1 are gone
    assert len(q) == 5 and q.is_full
    assert torch.equal(q.features[:, 0], torch.tensor([2., 3., 4., 5., 6.]))
    q.enqueue(rows(7, 12))  # more than the capacity at once: only the newest 5 are kept
    assert torch.equal(q.features[:, 0], torch.tensor([14., 15., 16., 17., 18.]))
    q.enqueue(rows(19, 0))  # empty batch is a no-op
    assert torch.equal(q.features[:, 0], torch.tensor([14., 15., 16., 17., 18.]))


def test_queue_matches_a_reference_fifo_for_random_batch_sizes():
    g = torch.Generator().manual_seed(0)
    q, reference, seen = FeatureQueue(dim=2, capacity=7), [], 0
    for _ in range(30):
        n = int(torch.randint(0, 11, (1,), generator=g))
        q.enqueue(rows(seen, n, dim=2))
        reference = (reference + list(range(seen, seen + n)))[-7:]
        seen += n
        assert q.features[:, 0].tolist() == [float(v) for v in reference]


def test_queue_stores_detached_copies_and_rejects_wrong_dim():
    q = FeatureQueue(dim=3, capacity=4)
    x = torch.ones(2, 3, requires_grad=True)
    q.enqueue(x * 2)
    assert not q.features.requires_grad
    with pytest.raises(ValueError):
        q.enqueue(torch.ones(2, 4))


def test_queue_state_dict_round_trip_restores_pointer_and_fill():
    q = FeatureQueue(dim=3, capacity=5)
    q.enqueue(rows(0, 7))
    state = q.state_dict()
    assert set(state) == {"storage", "pointer", "num_filled"}
    restored = FeatureQueue(dim=3, capacity=5)
    restored.load_state_dict(state)
    assert torch.equal(restored.features, q.features) and len(restored) == len(q)
    q.enqueue(rows(7, 2))
    restored.enqueue(rows(7, 2))  # continues exactly where the original was
    assert torch.equal(restored.features, q.features)
    partial = FeatureQueue(dim=3, capacity=5)
    partial.enqueue(rows(0, 2))
    again = FeatureQueue(dim=3, capacity=5)
    again.load_state_dict(partial.state_dict())
    assert len(again) == 2 and torch.equal(again.features, partial.features)


def test_queue_fp16_storage_and_buffers_move_with_module():
    q = FeatureQueue(dim=3, capacity=4, store_fp16=True)
    q.enqueue(torch.full((2, 3), 1.5))
    assert q.features.dtype == torch.float16 and torch.all(q.features == 1.5)
    assert {name for name, _ in q.named_buffers()} == {"storage", "pointer", "num_filled"}
    q.to("cpu")  # device moves keep the content
    assert len(q) == 2


def test_class_bank_routes_by_label_with_per_class_capacity():
    bank = ClassMemoryBank(num_classes=3, dim=3, capacity=4, background_capacity=6)
    assert bank.capacities == [6, 4, 4]
    labels = torch.tensor([0, 1, 1, -1, 2, 1, 1, 1, 0])
    bank.enqueue(rows(0, 9), labels)
    assert bank.sizes() == [2, 4, 1]
    assert bank.get(0)[:, 0].tolist() == [0., 8.]
    assert bank.get(1)[:, 0].tolist() == [2., 5., 6., 7.]  # row 1 (oldest class-1 row) dropped
    assert bank.get(2)[:, 0].tolist() == [4.]  # the -1 row went nowhere
    with pytest.raises(ValueError):
        bank.enqueue(rows(0, 1), torch.tensor([3]))
    explicit = ClassMemoryBank(num_classes=2, dim=3, capacity=[2, 5])
    assert explicit.capacities == [2, 5]


def test_class_bank_state_dict_round_trip_and_fp16():
    bank = ClassMemoryBank(num_classes=2, dim=3, capacity=3, background_capacity=None, store_fp16=True)
    bank.enqueue(rows(0, 5), torch.tensor([0, 1, 0, 0, 0]))
    restored = ClassMemoryBank(num_classes=2, dim=3, capacity=3, background_capacity=None, store_fp16=True)
    restored.load_state_dict(bank.state_dict())
    for c in range(2):
        assert torch.equal(restored.get(c), bank.get(c))
        assert restored.get(c).dtype == torch.float16
    assert restored.get(0)[:, 0].tolist() == [2., 3., 4.]
