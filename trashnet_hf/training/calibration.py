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

The same validation scores, once calibrated, set the app's "not sure" threshold (``low_confidence``): the
lowest top score t such that the validation photos scoring t or more are right at least 95% of the time,
clamped to [0.5, 0.9]. Stored in config.json beside T, so each model carries its own.
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
from trashnet_hf.core.model import DEFAULT_LOW_CONFIDENCE, THRESHOLD_KEY, THRESHOLD_RULE_KEY
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
# The "not sure" rule: the answers the app does not flag should be right 19 times in 20 (on the
# validation split, as the old fixed 0.6 was, 95% above it on a Lite0 run). The clamp keeps the notice
# meaningful: under 0.5 a calibrated model expects to be wrong more often than right, so that is always
# flagged; over 0.9 a weak model would flag most of its answers and the notice would say nothing.
TARGET_ACCURACY = 0.95
THRESHOLD_RANGE = (0.5, 0.9)
MIN_THRESHOLD_IMAGES = 50  # fewer validation photos: one mistake moves the accuracy by over 2 points
RULE = (
    f"the lowest top score t at which validation photos scoring t or more are right at least "
    f"{TARGET_ACCURACY:.0%} of the time, clamped to [{THRESHOLD_RANGE[0]}, {THRESHOLD_RANGE[1]}]"
)


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
        return
    # A raw head again: config.json says nothing of a temperature, nor of a threshold set on its scores.
    for key in (CONFIG_KEY, THRESHOLD_KEY, THRESHOLD_RULE_KEY):
        if hasattr(model.config, key):
            delattr(model.config, key)


def low_confidence_threshold(probs: np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[float, str]:
    """The "not sure" threshold of these (calibrated, validation) scores and the rule's one-line account:
    RULE, or DEFAULT_LOW_CONFIDENCE when there are under MIN_THRESHOLD_IMAGES photos."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    n = len(labels)
    if n < MIN_THRESHOLD_IMAGES:
        return DEFAULT_LOW_CONFIDENCE, (
            f"the default {DEFAULT_LOW_CONFIDENCE}: {n} validation photos, under the {MIN_THRESHOLD_IMAGES} "
            "the rule needs"
        )
    top, right = probs.max(axis=-1), probs.argmax(axis=-1) == labels
    order = np.argsort(-top, kind="stable")
    top, right = top[order], right[order]
    accuracy = np.cumsum(right) / np.arange(1, n + 1)  # of the k best-scoring photos, k = 1..n
    # "Scoring t or more" takes in every tie of t: only the last photo of a run of equal scores ends a set.
    ends = np.append(top[:-1] > top[1:], True)
    passing = np.flatnonzero(ends & (accuracy >= TARGET_ACCURACY))
    t = top[passing[-1]] if passing.size else THRESHOLD_RANGE[1]  # the largest set: the lowest t
    low, high = THRESHOLD_RANGE
    return float(min(max(t, low), high)), f"{RULE}; {n} validation photos"


def threshold_report(threshold: float, probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """How ``threshold`` splits one split's photos: the share flagged (top score under it) and the accuracy
    of the flagged and of the other photos (None for an empty side)."""
    top, right = probs.max(axis=-1), probs.argmax(axis=-1) == np.asarray(labels)
    flagged = top < threshold
    return {
        "images": len(top),
        "flagged_share": float(flagged.mean()) if len(top) else 0.0,
        "accuracy_below": float(right[flagged].mean()) if flagged.any() else None,
        "accuracy_at_or_above": float(right[~flagged].mean()) if (~flagged).any() else None,
    }


def set_low_confidence(model: nn.Module, threshold: float, rule: str) -> None:
    """Record the threshold and its rule in the model's config (config.json), beside the temperature."""
    setattr(model.config, THRESHOLD_KEY, float(threshold))
    setattr(model.config, THRESHOLD_RULE_KEY, rule)


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
    T minimised that NLL, so the after figures there are in-sample; "test": held out); and the "not sure"
    threshold set on the fit split's calibrated scores, with how it splits each split ("low_confidence")."""
    calibrated = {s: (softmax(logits / temp, axis=-1), labels) for s, (logits, labels) in splits.items()}
    threshold, rule = low_confidence_threshold(*calibrated[FIT_SPLIT])
    return {
        "method": METHOD,
        "temperature": temp,
        "bins": BINS,
        "fitted_on": FIT_SPLIT,
        **{SUMMARY_KEYS[s]: split_report(logits, labels, temp) for s, (logits, labels) in splits.items()},
        "low_confidence": {
            "threshold": threshold,
            "rule": rule,
            "target_accuracy": TARGET_ACCURACY,
            "range": list(THRESHOLD_RANGE),
            "min_images": MIN_THRESHOLD_IMAGES,
            "fallback": len(calibrated[FIT_SPLIT][1]) < MIN_THRESHOLD_IMAGES,  # the default, not the rule
            **{SUMMARY_KEYS[s]: threshold_report(threshold, *pair) for s, pair in calibrated.items()},
        },
    }


def describe_threshold(summary: dict[str, Any]) -> str:
    """One line: the "not sure" threshold, its rule, and the share of each split it flags."""
    low = summary["low_confidence"]
    shares = "; ".join(
        f"{LABELS[key]} {low[key]['flagged_share']:.1%} flagged" for key in LABELS if key in low
    )
    return f'"not sure" threshold {low["threshold"]:.3f} ({low["rule"]}): {shares}'


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
