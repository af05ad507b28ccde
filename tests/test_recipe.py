"""recipe.py: layer-wise learning rates, the objective and EMA do what their flags say."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import get_cosine_schedule_with_warmup

from trashnet_hf.training.recipe import (
    Objective,
    balanced_class_weights,
    ema_note,
    make_ema,
    param_groups,
    update_ema,
)


def _lr_of(groups: list[dict], param: torch.nn.Parameter) -> float:
    return next(g["lr"] for g in groups if any(p is param for p in g["params"]))


def test_layer_decay_slows_the_backbone_and_keeps_the_head_rate() -> None:
    model = timm.create_model("test_resnet", num_classes=3)
    flat = param_groups(model, 1e-3, 0.05, layer_decay=1.0)
    assert {g["lr"] for g in flat} == {1e-3}
    assert all(g["weight_decay"] == 0.0 for g in flat if any(p.ndim <= 1 for p in g["params"]))
    decayed = param_groups(model, 1e-3, 0.05, layer_decay=0.5)
    head, stem = _lr_of(decayed, model.fc.weight), _lr_of(decayed, model.conv1[0].weight)
    assert head == pytest.approx(1e-3) and stem < head / 4
    # Every parameter is optimised exactly once.
    assert sum(len(g["params"]) for g in decayed) == len(list(model.parameters()))
    # The schedule scales each group's own rate: the ratio survives warm-up and decay.
    optimizer = torch.optim.AdamW(decayed, lr=1e-3)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 2, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs[id(model.conv1[0].weight)] / lrs[id(model.fc.weight)] == pytest.approx(stem / head)


def test_the_objective_is_label_smoothed_cross_entropy_by_default() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 4), torch.randint(0, 4, (8,))
    objective = Objective(4, label_smoothing=0.1)
    _, targets = objective.mix(torch.zeros(8, 3, 4, 4), labels)
    assert targets.sum(-1).allclose(torch.ones(8))
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert objective(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_class_weights_follow_torch_convention_and_balance_the_classes() -> None:
    labels = [0, 0, 0, 0, 1, 2]
    weights = balanced_class_weights(labels, 3)
    assert weights.tolist() == pytest.approx([0.5, 2.0, 2.0])
    # Each class now adds the same total weight.
    counts = torch.bincount(torch.tensor(labels), minlength=3).float()
    assert (counts * weights).tolist() == pytest.approx([2.0, 2.0, 2.0])
    torch.manual_seed(1)
    logits, y = torch.randn(6, 3), torch.tensor(labels)
    objective = Objective(3, class_weights=weights)
    _, targets = objective.mix(torch.zeros(6, 3, 2, 2), y)
    expected = F.cross_entropy(logits, y, weight=weights)
    assert objective(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_mixup_mixes_images_and_targets() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = Objective(4, mixup_alpha=0.4).mix(images.clone(), labels)
    assert not torch.equal(mixed, images)
    assert targets.sum(-1).allclose(torch.ones(4))
    assert ((targets > 0).sum(-1) == 2).all()  # each image is two photos' labels in some proportion


def test_ema_trails_the_weights_and_is_off_at_zero() -> None:
    model = torch.nn.Linear(2, 2)
    assert make_ema(model, 0.0) is None
    ema = make_ema(model, 0.9, warmup_steps=0)
    start = model.weight.detach().clone()
    for step in range(1, 50):
        with torch.no_grad():
            model.weight.add_(0.1)  # weights that keep moving: the average lags behind them
        update_ema(ema, model, step)
    trailing = ema.module.weight
    assert (trailing > start + 1.0).all() and (trailing < model.weight - 0.5).all()


def test_the_decay_that_acts_is_the_one_set_once_the_warm_up_ends() -> None:
    """Measured on the weights: EMA_new = d * EMA_old + (1 - d) * model gives the d that acted. timm's
    warm-up (1 - (1 + t)^(-2/3)) would have given 0, 0.37, 0.52, 0.60, ... here, never 0.9 this early."""
    model = torch.nn.Linear(3, 2)
    ema = make_ema(model, 0.9, warmup_steps=3)
    acted = []
    for step in range(1, 8):
        with torch.no_grad():
            model.weight.mul_(1.5).add_(1.0)  # a new point each step, away from the average
        before = ema.module.weight.detach().clone()
        recorded = update_ema(ema, model, step)
        measured = ((ema.module.weight - model.weight) / (before - model.weight)).mean().item()
        assert measured == pytest.approx(recorded, abs=1e-5)
        acted.append(recorded)
    assert acted == pytest.approx([0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.9])  # 3 copies, then exactly 0.9


def test_a_run_too_short_for_its_ema_is_told_so() -> None:
    assert "only copies the weights" in ema_note(0.998, warmup_steps=100, total_steps=40)
    note = ema_note(0.998, warmup_steps=100, total_steps=440)  # the 8-epoch recipe's 440 steps
    assert "about 500 steps" in note and "51%" in note  # 0.998 ** 340
    assert ema_note(0.99, warmup_steps=100, total_steps=440) is None  # 100 steps' horizon fits in 340
    assert ema_note(0.9, warmup_steps=2, total_steps=12) is None  # 10 steps' horizon, 10 steps averaged
    assert ema_note(0.0, warmup_steps=100, total_steps=10) is None  # no EMA
