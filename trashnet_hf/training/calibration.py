"""Temperature scaling: one temperature T, fitted on the validation split, folded into the classifier head.

A fine-tuned network's top scores rarely match how often it is right: trained on hard labels it is
over-confident (T > 1 softens its scores), trained with label smoothing, as here, under-confident (the
Lite0 recipe run needed T = 0.64). Dividing every logit by one T fixes much of either without changing
any argmax (Guo et al., 2017, "On Calibration of Modern Neural Networks"). T minimises the validation
negative log-likelihood and is folded into the head (weight / T, bias / T), so the saved model's own
logits are the calibrated ones: ``pipeline()``, the app and an ONNX export give calibrated scores with
no extra code.

The fit is scipy's bounded Brent search over log T (``minimize_scalar``), not torch's LBFGS: the problem
has one parameter and is unimodal (the NLL is convex in 1/T), so a bracketing search finds its minimum
without a learning rate, an iteration budget or a line search to tune, deterministically in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import softmax
from torch import nn

from trashnet_hf.core.errors import UserError
from trashnet_hf.training.metrics import (
    ReliabilityBins,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)

METHOD = "temperature scaling: one T fitted on validation logits (NLL)"
BINS = 15
MIN_T, MAX_T = 0.05, 20.0  # far outside what a trained classifier needs; a fit at a bound is reported
CONFIG_KEY = "calibration_temperature"  # in the model's config.json: the T folded into its head
FIT_SPLIT = "val"  # the split T is fitted on: its after-calibration figures are in-sample
# results.json's name for each split's block: the fit set's says so, test is the held-out figure.
SUMMARY_KEYS = {"val": "val_fit_set", "test": "test"}
LABELS = {"val_fit_set": "val (fit set)", "test": "test (held out)"}  # in the printed line


class CalibrationError(UserError):
    """Calibration cannot run: no validation images, or a head that is not one linear layer."""


def fit_temperature(logits: np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """The T in [MIN_T, MAX_T] that minimises the NLL of ``softmax(logits / T)`` against ``labels``."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise CalibrationError(f"calibration needs validation logits (N, C) with N > 0, got {logits.shape}")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits / math.exp(log_t), labels),
        bounds=(math.log(MIN_T), math.log(MAX_T)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


def classifier_head(model: nn.Module) -> nn.Linear | nn.Conv2d:
    """The layer that computes the logits of a ``TimmWrapperForImageClassification`` (timm's
    ``get_classifier()``); refuses heads that are not a single linear layer."""
    head = model.timm_model.get_classifier()
    if not isinstance(head, nn.Linear | nn.Conv2d) or head.bias is None:
        raise CalibrationError(
            f"{model.config.architecture}: its classifier is {type(head).__name__}, not one linear layer "
            "with a bias, so a temperature cannot be folded into it; train with --calibrate false."
        )
    return head


def folded_temperature(model: nn.Module) -> float:
    """The temperature already folded into ``model``'s head (1.0 for a model never calibrated)."""
    return float(getattr(model.config, CONFIG_KEY, None) or 1.0)


@torch.no_grad()
def set_temperature(model: nn.Module, temperature: float) -> None:
    """Scale the head in place so the model's logits are its raw logits / ``temperature``, and record T in
    its config (config.json). Relative to the T already folded in, so 1.0 restores the raw head."""
    if not temperature > 0:
        raise ValueError(f"temperature must be above 0, got {temperature}")
    head, factor = classifier_head(model), temperature / folded_temperature(model)
    head.weight.div_(factor)
    head.bias.div_(factor)
    if temperature != 1.0:
        setattr(model.config, CONFIG_KEY, float(temperature))
    elif hasattr(model.config, CONFIG_KEY):  # a raw head again: config.json says nothing of a temperature
        delattr(model.config, CONFIG_KEY)


def split_report(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """NLL and ECE of one split's raw logits, before and after dividing them by ``temperature``."""
    before, after = softmax(logits, axis=-1), softmax(logits / temperature, axis=-1)
    return {
        "nll_before": negative_log_likelihood(logits, labels),
        "nll_after": negative_log_likelihood(logits / temperature, labels),
        "ece_before": expected_calibration_error(before, labels, BINS),
        "ece_after": expected_calibration_error(after, labels, BINS),
    }


def calibration_summary(temp: float, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """results.json's "calibration" block: the method, T, the bins, the split T was fitted on, and each
    split's (raw logits, labels) scored before and after, under its SUMMARY_KEYS name ("val_fit_set":
    T minimised that NLL, so the after figures there are in-sample; "test": held out)."""
    return {
        "method": METHOD,
        "temperature": temp,
        "bins": BINS,
        "fitted_on": FIT_SPLIT,
        **{SUMMARY_KEYS[s]: split_report(logits, labels, temp) for s, (logits, labels) in splits.items()},
    }


def split_blocks(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The summary's per-split blocks ("val_fit_set", "test"), those it holds."""
    return {key: summary[key] for key in LABELS if key in summary}


def at_bound(temperature: float) -> bool:
    """Whether the fit stopped at the search's edge (the data wanted a more extreme T: worth a warning)."""
    return not MIN_T * 1.001 < temperature < MAX_T / 1.001


def reliability_panels(
    temperature: float, logits: np.ndarray, labels: np.ndarray
) -> list[tuple[str, ReliabilityBins]]:
    """One split's reliability bins before and after dividing its raw logits by ``temperature``."""
    return [
        ("Before calibration", reliability_bins(softmax(logits, axis=-1), labels, BINS)),
        (
            f"After (T = {temperature:.2f})",
            reliability_bins(softmax(logits / temperature, axis=-1), labels, BINS),
        ),
    ]


def describe(summary: dict[str, Any]) -> str:
    """One line: T and each split's NLL and ECE, before -> after, the fit set named as such."""
    splits = "; ".join(
        f"{LABELS[key]} NLL {m['nll_before']:.3f} -> {m['nll_after']:.3f}, "
        f"ECE {m['ece_before']:.3f} -> {m['ece_after']:.3f}"
        for key, m in split_blocks(summary).items()
    )
    return f"calibration: T = {summary['temperature']:.3f}, fitted on {FIT_SPLIT}; {splits}"
