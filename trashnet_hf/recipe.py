"""The fine-tuning recipe's parts: layer-wise learning rates, the objective, and EMA weights.

Each part is a timm utility (``param_groups_layer_decay``, ``Mixup``, ``ModelEmaV3``) set from the typed
config; the loop in ``training`` only calls them. Which settings are the defaults, and why, is measured
by ``bench/accuracy.py`` (see the README).
"""

from __future__ import annotations

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


def make_ema(model: nn.Module, decay: float) -> ModelEmaV3 | None:
    """An exponential moving average of the weights (None when ``decay`` is 0). timm's warm-up makes the
    effective decay grow with the step count, so a short fine-tune is not dragged back to its start."""
    if decay <= 0:
        return None
    return ModelEmaV3(model, decay=decay, use_warmup=True)
