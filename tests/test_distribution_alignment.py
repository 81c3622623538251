"""Class-distribution alignment of the teacher (modules.distribution_alignment): values, what it counts, resume."""
import torch

from nnunet_mona.modules.distribution_alignment import ClassDistributionAlignment


def _probs(foreground: torch.Tensor) -> torch.Tensor:
    """(B, H, W) foreground probabilities -> (B, 2, H, W) softmax-like probabilities."""
    return torch.stack((1 - foreground, foreground), dim=1)


def test_matching_shares_leave_the_probabilities_unchanged():
    alignment = ClassDistributionAlignment(2, momentum=0.0)
    probs = _probs(torch.rand(2, 8, 8))
    share = probs.mean(dim=(0, 2, 3))
    # labels whose class share is exactly the teacher's: 1 - share[0] of the pixels are foreground
    target = torch.zeros(1, 1, 100, 100, dtype=torch.long)
    target.view(-1)[:int(round(float(share[1]) * 10000))] = 1
    alignment.observe_labeled(target)
    aligned = alignment.align(probs, torch.ones(2, 8, 8, dtype=torch.bool))
    assert torch.allclose(aligned, probs, atol=2e-3)


def test_an_under_segmenting_teacher_is_pushed_towards_the_labeled_share():
    alignment = ClassDistributionAlignment(2, momentum=0.0)
    target = torch.zeros(1, 1, 10, 10, dtype=torch.long)
    target[..., :3, :] = 1  # labeled images: 30 % foreground
    alignment.observe_labeled(target)
    foreground = torch.full((1, 10, 10), 0.05)
    foreground[:, :2, :] = 0.9  # teacher: 20 % confident foreground, a strip it is unsure of (p 0.48)
    foreground[:, 2, :] = 0.48
    probs = _probs(foreground)
    aligned = alignment.align(probs, torch.ones(1, 10, 10, dtype=torch.bool))
    assert torch.allclose(aligned.sum(dim=1), torch.ones(1, 10, 10))
    teacher_share = float(probs[:, 1].mean())  # 0.263
    ratio = (0.3 / teacher_share) / (0.7 / (1 - teacher_share))
    expected = 0.48 * ratio / (0.48 * ratio + 0.52)  # the uncertain strip, by hand
    assert abs(float(aligned[0, 1, 2, 0]) - expected) < 1e-5
    assert aligned[0, 1, 2, 0] > 0.5 > probs[0, 1, 2, 0]  # the strip's pseudo-label flips to foreground
    assert aligned[:, 1].mean() > probs[:, 1].mean()


def test_ignore_labels_and_padding_are_not_counted():
    alignment = ClassDistributionAlignment(2, momentum=0.0)
    target = torch.tensor([[[[1, 0, -1, 2]]]])  # -1 / 2: outside [0, K) (ignore label), not counted
    alignment.observe_labeled(target)
    assert torch.allclose(alignment.labeled_share, torch.tensor([0.5, 0.5]))
    probs = _probs(torch.tensor([[[0.2, 0.2, 1.0, 1.0]]]))
    valid = torch.tensor([[[True, True, False, False]]])  # padding: the teacher's 1.0 there must not count
    alignment.align(probs, valid)
    assert torch.allclose(alignment.teacher_share, torch.tensor([0.8, 0.2]))


def test_running_shares_and_resume_from_state_dict():
    torch.manual_seed(0)
    batches = [(torch.randint(0, 3, (2, 1, 6, 6)), torch.softmax(torch.randn(2, 3, 6, 6), 1)) for _ in range(4)]
    valid = torch.ones(2, 6, 6, dtype=torch.bool)
    uninterrupted, first = ClassDistributionAlignment(3), ClassDistributionAlignment(3)
    outputs = []
    for target, probs in batches:
        uninterrupted.observe_labeled(target)
        outputs.append(uninterrupted.align(probs, valid))
    for target, probs in batches[:2]:
        first.observe_labeled(target)
        first.align(probs, valid)
    resumed = ClassDistributionAlignment(3)
    resumed.load_state_dict({k: v.clone() for k, v in first.state_dict().items()})
    for (target, probs), expected in zip(batches[2:], outputs[2:]):
        resumed.observe_labeled(target)
        assert torch.equal(resumed.align(probs, valid), expected)
    # momentum 0.99: each running share moves 1 % of the way to a new batch's share
    before = uninterrupted.labeled_share.clone()
    uninterrupted.observe_labeled(torch.zeros(1, 1, 4, 4, dtype=torch.long))
    assert torch.allclose(uninterrupted.labeled_share, 0.99 * before + 0.01 * torch.tensor([1.0, 0, 0]))
    before = uninterrupted.teacher_share.clone()
    uninterrupted.align(torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1).expand(1, 3, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))
    assert torch.allclose(uninterrupted.teacher_share, 0.99 * before + 0.01 * torch.tensor([1.0, 0, 0]))


def _foreground_after_a_random_start(alignment: ClassDistributionAlignment, steps: int) -> float:
    """A random teacher (first batch: p = 0.5 everywhere), then ``steps`` batches of a teacher that has learnt the
    labeled share (10 % foreground, p 0.9 on it): returns the mean aligned foreground probability at the end."""
    target = torch.zeros(1, 1, 10, 10, dtype=torch.long)
    target[..., :1, :] = 1  # 10 % foreground
    valid = torch.ones(1, 10, 10, dtype=torch.bool)
    alignment.observe_labeled(target)
    alignment.align(_probs(torch.full((1, 10, 10), 0.5)), valid)
    learnt = torch.full((1, 10, 10), 0.1 / 9)
    learnt[:, :1, :] = 0.9  # mean foreground probability 0.1 = the labeled share
    for _ in range(steps):
        alignment.observe_labeled(target)
        aligned = alignment.align(_probs(learnt), valid)
    return float(aligned[:, 1].mean())


def test_the_random_start_of_the_teacher_is_forgotten_within_a_few_dozen_steps():
    # teacher momentum 0.9 follows the teacher: after 30 steps its (correct) share is left almost unchanged
    assert abs(_foreground_after_a_random_start(ClassDistributionAlignment(2, teacher_momentum=0.9), 30) - 0.1) < 0.01
    # a slow teacher mean (0.99, the default, the labeled share's) still remembers the random start's 50 %
    # foreground and suppresses the foreground the teacher has right. The default stays 0.99 all the same: 0.9
    # did not raise Dice on ACDC (docs/results.md)
    slow = _foreground_after_a_random_start(ClassDistributionAlignment(2), 30)
    assert slow < 0.07  # well below the teacher's 0.1 (0.9 stays near it)


# ---------------------------------------------------------------- inside a real trainer (dataset: conftest)
def _aligned_mean_teacher(dataset):
    from nnunet_mona.trainers.ready_trainer import make_trainer, start_loaders
    trainer = make_trainer("nnUNetTrainerMeanTeacher_randomStart", dataset["pre"], fold=2, seed=0)  # aligns by default
    start_loaders(trainer)
    return trainer


def test_trainer_trains_on_aligned_pseudo_labels_and_checkpoints_the_shares(hidden_label_dataset, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = _aligned_mean_teacher(hidden_label_dataset)
    seen = []
    make_input = trainer.make_student_unlabeled_input
    monkeypatch.setattr(trainer, "make_student_unlabeled_input",
                        lambda unlabeled, teacher_out: seen.append((unlabeled, teacher_out)) or
                        make_input(unlabeled, teacher_out))
    for _ in range(2):
        trainer.train_step(next(trainer.dataloader_train))
    alignment = trainer.distribution_alignment
    assert alignment.labeled_share is not None and alignment.teacher_share is not None
    assert abs(float(alignment.labeled_share.sum()) - 1) < 1e-5 and alignment.labeled_share[1:].sum() > 0
    # the student's targets are the aligned teacher probabilities, not the raw ones
    unlabeled, teacher_out = seen[-1]
    raw = trainer.teacher_predict(unlabeled["data_weak"])["probs"]
    assert not torch.allclose(teacher_out["probs"], raw)
    assert torch.equal(teacher_out["pseudo_label"], teacher_out["probs"].argmax(1))
    # a resume restores the running shares exactly
    state = trainer.extra_checkpoint_state()["distribution_alignment"]
    other = _aligned_mean_teacher(hidden_label_dataset)
    other.load_extra_checkpoint_state({**trainer.extra_checkpoint_state(), "rng_state": None})
    assert torch.equal(other.distribution_alignment.teacher_share, state["teacher_share"])
    assert torch.equal(other.distribution_alignment.labeled_share, state["labeled_share"])


def test_alignment_is_off_in_the_default_mean_teacher_and_on_where_the_teacher_starts_random(hidden_label_dataset,
                                                                                              monkeypatch):
    """The default Mean Teacher (warm-up) builds no alignment; its _warmStart / _randomStart variants, the
    variants about alignment, MONA and ACTION do."""
    import nnunet_mona.trainers as trainers
    from nnunet_mona.trainers.ready_trainer import make_trainer
    for name in ("nnUNetTrainerMeanTeacher_warmStart", "nnUNetTrainerMeanTeacher_randomStart",
                 "nnUNetTrainerMeanTeacher_alignToLabelMaps", "nnUNetTrainerMeanTeacher_alignmentMomentum09",
                 "nnUNetTrainerMONA", "nnUNetTrainerACTION"):
        assert getattr(trainers, name).align_class_distribution is True, name
    for name in ("nnUNetTrainerMeanTeacher", "nnUNetTrainerMeanTeacher_noAlignment", "nnUNetTrainerMONA_noAlignment"):
        trainer = make_trainer(name, hidden_label_dataset["pre"], fold=2, seed=0)
        assert trainer.distribution_alignment is None, name


# ---------------------------------------------------------------- a fixed target: the labeled label maps
def test_label_map_share_weights_every_slice_alike_and_skips_ignored_voxels():
    import numpy as np
    from nnunet_mona.modules.distribution_alignment import label_map_class_share
    volume = np.zeros((2, 4, 4), np.int64)
    volume[0] = 1  # slice 0 all foreground, slice 1 all background
    volume[1, 0, :] = -1  # nnU-Net's ignore / outside-mask value: not counted
    assert torch.allclose(label_map_class_share([volume], 2, slice_axis=0), torch.tensor([0.5, 0.5]))
    assert torch.allclose(label_map_class_share([volume], 2), torch.tensor([12 / 28, 16 / 28]))
    # two maps count alike whatever their size
    small = np.ones((1, 2, 2), np.int64)
    assert torch.allclose(label_map_class_share([volume, small], 2, slice_axis=0), torch.tensor([0.25, 0.75]))


def test_a_fixed_target_ignores_the_labeled_patches_and_survives_a_resume():
    fixed = torch.tensor([0.9, 0.1])
    alignment = ClassDistributionAlignment(2, momentum=0.0, labeled_share=fixed)
    alignment.observe_labeled(torch.ones(1, 1, 4, 4, dtype=torch.long))  # all foreground: would move a running share
    assert torch.equal(alignment.labeled_share, fixed)
    alignment.load_state_dict({"labeled_share": torch.tensor([0.5, 0.5]), "teacher_share": torch.tensor([0.8, 0.2])})
    assert torch.equal(alignment.labeled_share, fixed) and torch.equal(alignment.teacher_share, torch.tensor([0.8, 0.2]))


def test_align_to_label_maps_reads_the_labeled_cases_only(hidden_label_dataset, monkeypatch):
    """The variant's target is the share of the fold's labeled label maps (the unlabeled cases' labels are moved
    away by the fixture, so reading one would fail) and training steps do not move it."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunet_mona.modules.distribution_alignment import label_map_class_share
    from nnunet_mona.trainers.ready_trainer import make_trainer, start_loaders
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = make_trainer("nnUNetTrainerMeanTeacher_alignToLabelMaps", hidden_label_dataset["pre"], fold=2, seed=0,
                           class_overrides={"supervised_warmup_fraction": 0.0})
    folder = trainer.preprocessed_dataset_folder
    labeled = hidden_label_dataset["roles"]["labeled"]
    dataset = infer_dataset_class(folder)(folder, labeled)
    k = trainer.label_manager.num_segmentation_heads
    expected = label_map_class_share((dataset.load_case(c)[1][0] for c in labeled), k, slice_axis=0)
    alignment = trainer.distribution_alignment
    assert alignment.fixed_labeled_share and torch.allclose(alignment.labeled_share, expected)
    start_loaders(trainer)
    trainer.train_step(next(trainer.dataloader_train))
    assert torch.allclose(alignment.labeled_share, expected) and alignment.teacher_share is not None
