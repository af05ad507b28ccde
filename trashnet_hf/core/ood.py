"""The out-of-distribution ("not waste") score: how far a photo's mid-level features lie from the training
photos' classes.

The score (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples"): take
the backbone's stride-16 feature stage (timm's ``feature_info``: ``blocks.4`` for EfficientNet-Lite,
``layer3`` for a ResNet), average it over the image, and measure the Mahalanobis distance to the nearest
class mean under one covariance shared by the classes, all fitted on the train split. Higher is more
foreign. The stride-16 stage still sees textures and backgrounds (grass, gravel, text, a face) that the
pooled penultimate features fold into a material; ``bench/ood.py`` measures both, and this one flags every
foreign image of its set where the penultimate kNN (Sun et al. 2022) flags 17 of 26.

Nothing is learnt and the logits come out of the same forward pass untouched, so the top-1 and the
calibration stay exactly as they were. The class means and the whitening matrix (about 50 KB) are saved as
float32 in ``ood.safetensors`` beside config.json, whose ``ood_*`` keys (``core.model_meta``) name the
stage, the threshold and how it was set. This module imports torch: the torch backend, training and the
ONNX export use it; serving an ONNX file does not.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from trashnet_hf.core.model_meta import (
    OOD_FILE,
    OOD_LAYER_KEY,
    OOD_METHOD,
    OOD_METHOD_KEY,
    OOD_RULE_KEY,
    OOD_THRESHOLD_KEY,
    ModelLoadError,
)

logger = logging.getLogger(__name__)

OOD_STRIDE = 16  # the deepest feature stage at this stride or finer is the one scored
# Covariance shrinkage towards its mean variance (on standardised features), so a stage wider than the train
# split is tall still inverts. bench/ood.py: 0, 0.01 and 0.1 agree within two test photos on five models.
SHRINKAGE = 0.01
MEANS_KEY, WHITEN_KEY = "means", "whiten"  # the tensors' names in ood.safetensors
_ATTR = "_trashnet_ood"  # where a loaded model carries its scorer (not a submodule: see attach)
_FIX = (
    "copy it again from the training output that wrote this model, or delete it to serve without the OOD "
    "score"
)


class OodScorer(nn.Module):
    """Mahalanobis OOD score: forward(features (B, C)) -> min over classes of |(f - mean_c) @ whiten| (B,).

    ``whiten`` (C, C) is the inverse square root of the shared covariance, so the distance is a plain
    Euclidean one after it; ``layer`` names the timm module whose pooled output ``features`` are."""

    def __init__(
        self,
        means: torch.Tensor,
        whiten: torch.Tensor,
        layer: str,
        threshold: float | None = None,
        rule: str | None = None,
    ):
        super().__init__()
        if means.ndim != 2 or whiten.shape != (means.shape[1], means.shape[1]):
            raise ValueError(
                f"the OOD data must be means (K, C) and whiten (C, C), got {tuple(means.shape)} and "
                f"{tuple(whiten.shape)}"
            )
        self.register_buffer(WHITEN_KEY, whiten.float())
        self.register_buffer("centres", means.float() @ whiten.float())  # the means, whitened once
        self.means_ = means.float()  # kept as saved (recomputing them from centres would round)
        self.layer, self.threshold, self.rule = layer, threshold, rule

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = features.float() @ self.whiten  # (B, C)
        d2 = (z[:, None, :] - self.centres[None]).square().sum(-1)  # (B, K)
        return d2.min(dim=-1).values.sqrt()

    def config_entries(self) -> dict[str, Any]:
        """The config.json keys that describe this scorer."""
        return {
            OOD_METHOD_KEY: OOD_METHOD,
            OOD_LAYER_KEY: self.layer,
            OOD_THRESHOLD_KEY: self.threshold,
            OOD_RULE_KEY: self.rule,
        }


def fit_scorer(features: np.ndarray, labels: np.ndarray, layer: str) -> OodScorer:
    """Class means and the shared within-class covariance of ``features`` (N, C) float, shrunk by
    SHRINKAGE on standardised features and inverted by its eigen-decomposition (no threshold yet)."""
    x = features.astype(np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd  # the shrinkage target is the mean variance, so put every channel on one scale
    classes = np.unique(labels)
    means_z = np.stack([z[labels == c].mean(0) for c in classes])
    centred = z - means_z[np.searchsorted(classes, labels)]
    cov = centred.T @ centred / len(z)
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.trace(cov) / len(cov) * np.eye(len(cov))
    eigenvalues, vectors = np.linalg.eigh(cov)
    whiten_z = vectors / np.sqrt(np.maximum(eigenvalues, 1e-12))
    # Back to raw features: ((x - mu) / sd) @ W_z == x @ (W_z / sd) - const, and means_x = mu + means_z * sd.
    whiten = torch.from_numpy(whiten_z / sd[:, None]).float()
    return OodScorer(torch.from_numpy(mu + means_z * sd).float(), whiten, layer)


def ood_stage(timm_model: nn.Module) -> int:
    """Index in timm's ``feature_info`` of the deepest stage at stride OOD_STRIDE or finer; ValueError for a
    model timm gives no feature stages or ``forward_intermediates`` for."""
    info = getattr(timm_model, "feature_info", None)
    if not info or not hasattr(timm_model, "forward_intermediates"):
        raise ValueError(
            f"{type(timm_model).__name__} exposes no timm feature stages (feature_info and "
            "forward_intermediates), which the OOD score reads; train with --ood-flag-rate 0"
        )
    return max(i for i, stage in enumerate(info) if stage["reduction"] <= OOD_STRIDE)


def ood_layer(timm_model: nn.Module) -> str:
    """The name of the module whose output the OOD score pools (e.g. ``blocks.4``)."""
    return timm_model.feature_info[ood_stage(timm_model)]["module"]


def feature_dim(timm_model: nn.Module) -> int:
    """The width of the pooled features the OOD score reads."""
    return int(timm_model.feature_info[ood_stage(timm_model)]["num_chs"])


def features_and_logits(
    timm_model: nn.Module, pixel_values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward: the stride-16 stage's features averaged over the image (B, C), and the logits,
    exactly what ``timm_model(pixel_values)`` (and so the wrapper's forward) gives."""
    final, (stage,) = timm_model.forward_intermediates(
        pixel_values, indices=[ood_stage(timm_model)], norm=False
    )
    return stage.mean(dim=(2, 3)), timm_model.forward_head(final)


def attach(model: nn.Module, scorer: OodScorer | None) -> None:
    """Let ``model`` carry ``scorer`` (None: none) to save_model, the Classifier and the export. A plain
    attribute, not a submodule: the model's state_dict, and so model.safetensors, stay pipeline()'s."""
    object.__setattr__(model, _ATTR, scorer)


def scorer_of(model: nn.Module) -> OodScorer | None:
    """The scorer ``model`` carries (see attach), or None."""
    return model.__dict__.get(_ATTR)


def save_ood(scorer: OodScorer, folder: Path) -> Path:
    """Write the means and the whitening matrix as float32 safetensors (``ood.safetensors``); the keys go
    into config.json."""
    path = folder / OOD_FILE
    tensors = {MEANS_KEY: scorer.means_.contiguous(), WHITEN_KEY: scorer.whiten.detach().cpu().contiguous()}
    save_file(tensors, str(path), metadata={"method": OOD_METHOD, "layer": scorer.layer})
    return path


def _entries(config: dict[str, Any], path: Path, layer: str) -> float:
    """The threshold from config.json, after checking the method and stage match this code and model."""
    method, value, saved_layer = (config.get(k) for k in (OOD_METHOD_KEY, OOD_THRESHOLD_KEY, OOD_LAYER_KEY))
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if method != OOD_METHOD or saved_layer != layer or not ok:
        raise ModelLoadError(
            f"{path} needs {OOD_METHOD_KEY}={OOD_METHOD!r}, {OOD_LAYER_KEY}={layer!r} (this model's "
            f"stride-{OOD_STRIDE} stage) and a number {OOD_THRESHOLD_KEY} in the config.json beside it, got "
            f"{method!r}, {saved_layer!r} and {value!r}; restore config.json as training wrote it, retrain "
            f"a model saved by another version, or delete {OOD_FILE} to serve without the OOD score."
        )
    return float(value)


def load_ood(folder: Path, config: dict[str, Any], timm_model: nn.Module) -> OodScorer | None:
    """The scorer saved in ``folder`` (None when it has no ood.safetensors); ModelLoadError, one line
    naming the file, for a damaged file, data of another width than the model's stage, or config.json keys
    that do not go with it."""
    path = folder / OOD_FILE
    if not path.is_file():
        if config.get(OOD_THRESHOLD_KEY) is not None:
            logger.warning("%s names an OOD threshold but %s is missing: no OOD score", folder, OOD_FILE)
        return None
    layer, dim = ood_layer(timm_model), feature_dim(timm_model)
    threshold = _entries(config, path, layer)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise ModelLoadError(f"{path} is truncated or not a safetensors file ({err}); {_FIX}.") from err
    means, whiten = tensors.get(MEANS_KEY), tensors.get(WHITEN_KEY)
    fits = means is not None and whiten is not None and means.ndim == 2 and means.shape[1] == dim
    if not fits or whiten.shape != (dim, dim):
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        raise ModelLoadError(
            f"{path} holds {shapes or 'nothing'}, but this model's {layer} needs {MEANS_KEY} "
            f"(classes, {dim}) and {WHITEN_KEY} ({dim}, {dim}); {_FIX}."
        )
    return OodScorer(means, whiten, layer, threshold, config.get(OOD_RULE_KEY) or "rule not recorded")
