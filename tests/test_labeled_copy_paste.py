"""Copy-paste between labeled and unlabeled patches (augment.labeled_copy_paste): what each pixel of the mixed view
shows and is trained towards, and the wiring into Mean Teacher (``mix_mode`` 'copy_paste')."""
import torch

from nnunet_mona.augment.labeled_copy_paste import copy_paste_with_labeled

IGNORE = 5  # a label outside [0, K): nnU-Net's ignore label


def _batch(b_u=4, n_l=2, k=3, size=(12, 10)):
    image = (1.0 + torch.arange(b_u, dtype=torch.float32)).view(b_u, 1, 1, 1).expand(b_u, 1, *size).clone()
    pseudo = torch.zeros(b_u, *size, dtype=torch.long)  # a teacher that sees background everywhere
    confidence = torch.full((b_u, *size), 0.5)
    probs = torch.full((b_u, k, *size), 1.0 / k)
    valid = torch.ones(b_u, *size, dtype=torch.bool)
    valid[:, 0, 0] = False  # padding of the unlabeled view
    labeled = (100.0 + torch.arange(n_l, dtype=torch.float32)).view(n_l, 1, 1, 1).expand(n_l, 1, *size).clone()
    target = torch.full((n_l, 1, *size), 2, dtype=torch.long)
    target[:, 0, -1, -1] = IGNORE
    return image, pseudo, confidence, probs, valid, labeled, target


def test_labeled_pixels_carry_their_ground_truth_and_the_rest_the_teachers_targets():
    torch.manual_seed(0)
    image, pseudo, confidence, probs, valid, labeled, target = _batch()
    out = copy_paste_with_labeled(image, pseudo, confidence, probs, valid, labeled, target, area_fraction=0.3)
    from_labeled = out["from_labeled"]
    # images 0, 1: a box of the labeled patch (30 %); images 2, 3: the labeled patch around an unlabeled box (70 %)
    share = from_labeled.float().flatten(1).mean(1)
    assert torch.all((share[:2] - 0.3).abs() < 0.06) and torch.all((share[2:] - 0.7).abs() < 0.06)
    assert out["labeled_index"].tolist() == [0, 1, 0, 1]
    for b in range(4):
        m = from_labeled[b]
        assert torch.all(out["image"][b, 0][m] == 100.0 + b % 2) and torch.all(out["image"][b, 0][~m] == 1.0 + b)
        ignored = torch.zeros_like(m)
        ignored[-1, -1] = True
        gt_pixels, kept = m & ~ignored, ~m & valid[b]
        # labeled pixels: the ground truth, certain (they pass any confidence threshold), one-hot probabilities
        assert torch.all(out["pseudo_label"][b][gt_pixels] == 2) and torch.all(out["confidence"][b][gt_pixels] == 1)
        assert torch.all(out["probs"][b, 2][gt_pixels] == 1) and torch.all(out["valid"][b][gt_pixels])
        # unlabeled pixels keep the teacher's targets and validity
        assert torch.all(out["pseudo_label"][b][kept] == 0) and torch.all(out["confidence"][b][kept] == 0.5)
        assert torch.allclose(out["probs"][b][:, kept], torch.full((3, int(kept.sum())), 1 / 3))
        # the ignore label and the unlabeled padding are invalid (-1), whichever side they fall on
        for pixel, source in (((-1, -1), m[-1, -1]), ((0, 0), not bool(m[0, 0]))):
            if source:
                assert out["pseudo_label"][b][pixel] == -1 and not out["valid"][b][pixel]


def test_more_unlabeled_than_labeled_patches_reuse_them_and_bad_shapes_are_refused():
    image, pseudo, confidence, probs, valid, labeled, target = _batch(b_u=5, n_l=2)
    out = copy_paste_with_labeled(image, pseudo, confidence, probs, valid, labeled, target[:, 0], 0.3)  # (N_l, *P)
    assert out["labeled_index"].tolist() == [0, 1, 0, 1, 0]
    assert out["from_labeled"][:3].float().mean() < 0.5 < out["from_labeled"][3:].float().mean()  # 3 inward
    for bad in (labeled[:, :, :6], torch.cat((labeled, labeled), 1), labeled[:0]):
        try:
            copy_paste_with_labeled(image, pseudo, confidence, probs, valid, bad, target[: bad.shape[0]])
        except ValueError as error:
            assert "labeled" in str(error)
        else:
            raise AssertionError(f"labeled patches {tuple(bad.shape)} were accepted")


def test_mean_teacher_mixes_this_steps_labeled_patches_into_the_student_view(hidden_label_dataset, monkeypatch):
    from nnunet_mona.trainers.ready_trainer import finish_loaders, make_trainer, start_loaders
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    try:  # misspelt: refused up front
        make_trainer("nnUNetTrainerMeanTeacher_randomStart", hidden_label_dataset["pre"], fold=2, seed=0,
                     class_overrides={"mix_mode": "copypaste"})
    except ValueError as error:
        assert "'copypaste'" in str(error) and "copy_paste" in str(error)
    else:
        raise AssertionError("a misspelt mix_mode was accepted")
    trainer = make_trainer("nnUNetTrainerMeanTeacher_copyPaste", hidden_label_dataset["pre"], fold=2, seed=0,
                           class_overrides={"supervised_warmup_fraction": 0.0})  # semi-supervised from step 0
    start_loaders(trainer)
    try:
        seen = []
        make_input = trainer.make_student_unlabeled_input
        monkeypatch.setattr(trainer, "make_student_unlabeled_input",
                            lambda u, t: seen.append(make_input(u, t)) or seen[-1])
        batch = next(trainer.dataloader_train)
        result = trainer.train_step(batch)
        student = seen[0]
        labeled = batch["data"][student["labeled_index"]]
        gt = (batch["target"][0] if isinstance(batch["target"], list) else batch["target"])[student["labeled_index"], 0]
        m = student["from_labeled"]
        assert 0 < m.float().mean() < 1
        assert torch.equal(student["image"].movedim(1, -1)[m], labeled.movedim(1, -1)[m])
        assert torch.equal(student["pseudo_label"][m & student["valid"]], gt.long()[m & student["valid"]])
        assert float(result["unsup"]) > 0 and float(result["confident_fraction"]) >= float(m.float().mean()) - 0.01
        assert trainer.labeled_patches is None  # not kept past the step
    finally:
        finish_loaders(trainer)
