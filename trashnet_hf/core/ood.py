"""The out-of-distribution ("not waste") score: kNN distance of a photo's features to the training set's.

Sun et al. 2022 ("Out-of-Distribution Detection with Deep Nearest Neighbors"): L2-normalise the
penultimate features (what the classifier head reads) and score a photo by 1 - its cosine similarity to
its k-th nearest training photo; higher is more foreign. Nothing is learnt, so the classifier's logits,
its top-1 and its calibration stay exactly as they were; the score rides beside them.

The training photos' normalised features (the "bank") are saved as float16 in ``ood.safetensors`` beside
config.json, whose ``ood_*`` keys (``core.model_meta``) hold k, the threshold and how it was set. The bank
stays float16 in memory as well, so PyTorch and the exported ONNX graph compare against the very same
numbers. This module imports torch: the torch backend, training and the ONNX export use it; serving an
ONNX file does not.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from trashnet_hf.core.model_meta import (
    OOD_FILE,
    OOD_K_KEY,
    OOD_METHOD,
    OOD_METHOD_KEY,
    OOD_RULE_KEY,
    OOD_THRESHOLD_KEY,
    ModelLoadError,
)

logger = logging.getLogger(__name__)

BANK_KEY = "bank"  # the tensor's name in ood.safetensors
MAX_BANK_BYTES = 6_000_000  # float16 bytes; a larger train split is subsampled, class-balanced
_ATTR = "_trashnet_ood"  # where a loaded model carries its scorer (not a submodule: see attach)
_FIX = (
    "copy it again from the training output that wrote this model, or delete it to serve without the OOD "
    "score"
)


class OodScorer(nn.Module):
    """kNN OOD score: forward(features (B, D)) -> 1 - k-th largest cosine similarity to ``bank`` (B,)."""

    def __init__(self, bank: torch.Tensor, k: int, threshold: float | None = None, rule: str | None = None):
        super().__init__()
        if bank.ndim != 2 or not 1 <= k <= bank.shape[0]:
            raise ValueError(f"the OOD bank must be (N, D) with N >= k={k}, got {tuple(bank.shape)}")
        self.register_buffer(BANK_KEY, F.normalize(bank.float(), dim=-1).half())
        self.k, self.threshold, self.rule = int(k), threshold, rule

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(features.float(), dim=-1)
        similarity = f @ self.bank.float().T  # (B, N); float32 maths on the stored float16 bank
        return 1.0 - similarity.topk(self.k, dim=-1).values[:, -1]

    def config_entries(self) -> dict[str, Any]:
        """The config.json keys that describe this scorer."""
        return {
            OOD_METHOD_KEY: OOD_METHOD,
            OOD_K_KEY: self.k,
            OOD_THRESHOLD_KEY: self.threshold,
            OOD_RULE_KEY: self.rule,
        }


def feature_dim(timm_model: nn.Module) -> int:
    """The width of the features the classifier head reads (timm's ``head_hidden_size`` where it differs
    from ``num_features``)."""
    return int(getattr(timm_model, "head_hidden_size", None) or timm_model.num_features)


def features_and_logits(
    timm_model: nn.Module, pixel_values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward: the pooled penultimate features and the logits computed from them, exactly what
    ``timm_model(pixel_values)`` (and so the wrapper's forward) gives."""
    features = timm_model.forward_head(timm_model.forward_features(pixel_values), pre_logits=True)
    return features, timm_model.get_classifier()(features)


def balanced_subsample(labels: np.ndarray, max_rows: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_rows`` rows, drawn round-robin over the classes (each class shuffled with
    ``seed``), so every class keeps the same count until the smaller ones run out; sorted."""
    if len(labels) <= max_rows:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    # Rank r of every class before rank r + 1 of any: a stable sort on the rank within its class.
    order = np.concatenate(per_class)
    ranks = np.concatenate([np.arange(len(rows)) for rows in per_class])
    picked = order[np.argsort(ranks, kind="stable")][:max_rows]
    return np.sort(picked)


def max_bank_rows(dim: int) -> int:
    """The most float16 rows of width ``dim`` that fit in MAX_BANK_BYTES."""
    return max(1, MAX_BANK_BYTES // (2 * dim))


def attach(model: nn.Module, scorer: OodScorer | None) -> None:
    """Let ``model`` carry ``scorer`` (None: none) to save_model, the Classifier and the export. A plain
    attribute, not a submodule: the model's state_dict, and so model.safetensors, stay pipeline()'s."""
    object.__setattr__(model, _ATTR, scorer)


def scorer_of(model: nn.Module) -> OodScorer | None:
    """The scorer ``model`` carries (see attach), or None."""
    return model.__dict__.get(_ATTR)


def save_ood(scorer: OodScorer, folder: Path) -> Path:
    """Write the bank as float16 safetensors (``ood.safetensors``); the keys go into config.json."""
    path = folder / OOD_FILE
    save_file({BANK_KEY: scorer.bank.detach().cpu().contiguous()}, str(path), metadata={"method": OOD_METHOD})
    return path


def _threshold(config: dict[str, Any], path: Path) -> tuple[float, int]:
    value, k = config.get(OOD_THRESHOLD_KEY), config.get(OOD_K_KEY)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ModelLoadError(
            f"{path} needs {OOD_THRESHOLD_KEY} (a number) and {OOD_K_KEY} (at least 1) in the config.json "
            f"beside it, got {value!r} and {k!r}; restore config.json as training wrote it, or delete "
            f"{OOD_FILE} to serve without the OOD score."
        )
    return float(value), k


def load_ood(folder: Path, config: dict[str, Any], dim: int) -> OodScorer | None:
    """The scorer saved in ``folder`` (None when it has no ood.safetensors); ModelLoadError, one line
    naming the file, for a damaged file, a bank of another width than the model's ``dim`` features, or
    config.json keys that do not go with it."""
    path = folder / OOD_FILE
    if not path.is_file():
        if config.get(OOD_THRESHOLD_KEY) is not None:
            logger.warning("%s names an OOD threshold but %s is missing: no OOD score", folder, OOD_FILE)
        return None
    threshold, k = _threshold(config, path)
    try:
        with safe_open(str(path), framework="pt") as f:
            bank = f.get_tensor(BANK_KEY) if BANK_KEY in f.keys() else None  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise ModelLoadError(f"{path} is truncated or not a safetensors file ({err}); {_FIX}.") from err
    if bank is None or bank.ndim != 2 or bank.shape[1] != dim or not k <= bank.shape[0]:
        shape = "no bank" if bank is None else f"a bank of shape {tuple(bank.shape)}"
        raise ModelLoadError(
            f"{path} holds {shape}, but this model needs (N >= {OOD_K_KEY}={k}, {dim}) features; {_FIX}."
        )
    return OodScorer(bank, k, threshold, config.get(OOD_RULE_KEY) or "rule not recorded")
