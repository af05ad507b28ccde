"""The fine-tuning recipe's parts: layer-wise learning rates, the objective, and EMA weights.

Each part is a timm utility (``param_groups_layer_decay``, ``Mixup``, ``ModelEmaV3``) set from the typed
config; the loop in ``training`` only calls them. Which settings are the defaults, and why, is measured
by ``bench/accuracy.py`` (see the README).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups: no decay on biases and norm weights (decaying them only hurts), and with
    ``layer_decay`` < 1 a learning rate that shrinks by that factor per layer from the head down, so the
    new head learns fast while the pretrained features move little (timm's grouping of the model's
    layers, ``group_matcher``)."""
    if layer_decay < 1.0:
        groups = param_groups_layer_decay(model, weight_decay, layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(model, weight_decay)
    for group in groups:
        # An explicit lr per group: the transformers/torch schedulers scale each group's initial lr,
        # while timm's "lr_scale" is read only by timm's own schedulers.
        group["lr"] = lr * group.pop("lr_scale", 1.0)
    return groups


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Per-class loss weights n / (k * n_c): every class adds the same total weight to an epoch."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).float()
    return counts.sum() / (num_classes * counts.clamp(min=1))


class Objective(nn.Module):
    """What the loop minimises: cross-entropy on label-smoothed targets, optionally on mixup/cutmix
    batches (timm's ``Mixup``, drawn once per batch on the host: no device sync) and with class weights."""

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.smoothing = num_classes, label_smoothing
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
        weights = class_weights if class_weights is not None else torch.ones(num_classes)
        self.register_buffer("class_weights", weights.float(), persistent=False)

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch to train on and its soft targets (one row per image, summing to 1)."""
        if self.mixup is not None:
            return self.mixup(images, labels)
        on = 1.0 - self.smoothing + self.smoothing / self.num_classes
        targets = F.one_hot(labels, self.num_classes).float() * (on - self.smoothing / self.num_classes)
        return images, targets + self.smoothing / self.num_classes

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Soft-target cross-entropy; with class weights, each image weighs its target's class weight and
        the mean is over those weights (``F.cross_entropy(weight=...)``'s convention)."""
        per_image = -(targets * F.log_softmax(logits, dim=-1)).sum(-1)
        weight = targets @ self.class_weights
        return (per_image * weight).sum() / weight.sum()


def make_ema(model: nn.Module, decay: float, warmup_steps: int = 0) -> ModelEmaV3 | None:
    """An exponential moving average of the weights (None when ``decay`` is 0).

    For the first ``warmup_steps`` updates the average is a copy of the weights (decay 0: the new head
    moves fast at first, and an average of it would only drag), then every update keeps exactly
    ``decay`` of it. timm's own warm-up (``use_warmup``) is not used: its decay 1 - (1 + t)^(-2/3) reaches
    0.998 only after ~11,000 updates, so on a fine-tune of a few hundred the setting never acted.
    ``update_after_step`` is timm's switch for this: decay 0 up to step ``update_after_step + 1``."""
    if decay <= 0:
        return None
    return ModelEmaV3(model, decay=decay, update_after_step=warmup_steps - 1, use_warmup=False)


def update_ema(ema: ModelEmaV3, model: nn.Module, step: int) -> float:
    """Average ``model``'s weights into ``ema`` at optimisation step ``step`` (from 1); return the decay
    that acted (0 during the warm-up: a copy)."""
    decay = ema.get_decay(step)
    ema.update(model, step=step)  # timm computes the same get_decay(step)
    return decay


def ema_note(decay: float, warmup_steps: int, total_steps: int) -> str | None:
    """A warning when the run is too short for the EMA it asks for, else None: the EMA never averages
    (the run ends within the warm-up), or it still holds much of the weights it started from at the end
    (its horizon, about 1 / (1 - decay) steps, is longer than the steps it averages)."""
    if decay <= 0:
        return None
    averaged = total_steps - warmup_steps
    if averaged <= 0:
        return (
            f"--ema-decay {decay:g}: this run has {total_steps} optimisation steps, within "
            f"--ema-warmup-steps {warmup_steps}, so the EMA only copies the weights; lower "
            "--ema-warmup-steps for an average, or pass --ema-decay 0."
        )
    held = decay**averaged
    if held > math.exp(-1):  # about: its horizon is longer than the steps it averages
        return (
            f"--ema-decay {decay:g} averages over about {1 / (1 - decay):.0f} steps, but this run averages "
            f"over {averaged} (after --ema-warmup-steps {warmup_steps}): at its end the EMA still holds "
            f"{held:.0%} of the weights it started from (step {warmup_steps}). Lower --ema-decay for an "
            "average of the late weights."
        )
    return None
