"""Classification metrics through the ``evaluate`` library, offline.

``evaluate.load("accuracy")`` fetches the metric's code from the Hub, so one module ships inside the
package (``classification_metrics.py``: accuracy, precision, recall, f1 and confusion_matrix, chosen by
``config_name``, with the interfaces of the Hub's evaluate-metric modules) and is loaded from its local
path; that needs no network and works with HF_HUB_OFFLINE=1.

The calibration metrics (negative log-likelihood, expected calibration error and its reliability bins) are
a few lines of numpy: no installed library computes a multiclass top-label ECE (torchmetrics does, and is
not worth its weight here; sklearn's ``calibration_curve`` is binary and returns no bin counts).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
from scipy.special import log_softmax
from scipy.stats import binomtest

METRIC_MODULE = Path(__file__).with_name("classification_metrics.py")
METRICS = ("accuracy", "precision", "recall", "f1", "confusion_matrix")  # its config names


@functools.cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """One of the packaged metrics: accuracy, precision, recall, f1 or confusion_matrix."""
    if name not in METRICS:
        raise ValueError(f"No packaged metric {name!r}: {METRIC_MODULE.name} has {', '.join(METRICS)}")
    # keep_in_memory: no Arrow cache files under HF_HOME for a one-shot compute.
    return evaluate.load(str(METRIC_MODULE), config_name=name, keep_in_memory=True)


def accuracy_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on ``total`` images: how far the true accuracy
    may lie from the measured one on a test set this size (scipy's ``binomtest``)."""
    if total == 0:
        return (0.0, 1.0)
    ci = binomtest(correct, total).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def _class_ids(values: Sequence[int] | np.ndarray, what: str, num_classes: int) -> np.ndarray:
    ids = np.asarray(values)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{what} must be a non-empty 1-D sequence of class ids, got shape {ids.shape}")
    if ids.min() < 0 or ids.max() >= num_classes:
        raise ValueError(f"{what} must be class ids in [0, {num_classes}), got {ids.min()}..{ids.max()}")
    return ids.astype(np.int64)


def compute_metrics(
    predictions: Sequence[int] | np.ndarray,
    references: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class precision/recall/F1/support and the confusion matrix.

    ``per_class`` and ``confusion_matrix`` (rows = truth, columns = prediction) cover every class in
    ``class_names``, including ones absent from this batch (scored 0, support 0). ``macro_f1`` averages,
    like sklearn's default, over the classes that occur in the references or predictions, so a class
    with nothing to score does not pull the mean towards 0. All values are plain Python (JSON-ready).
    """
    num_classes = len(class_names)
    preds = _class_ids(predictions, "predictions", num_classes)
    refs = _class_ids(references, "references", num_classes)
    if preds.shape != refs.shape:
        raise ValueError(f"predictions and references differ in length: {preds.size} != {refs.size}")

    every_class = list(range(num_classes))
    per_label = {"predictions": preds, "references": refs, "labels": every_class, "average": None}
    precision = load_metric("precision").compute(**per_label, zero_division=0)["precision"]
    recall = load_metric("recall").compute(**per_label, zero_division=0)["recall"]
    f1 = load_metric("f1").compute(**per_label, zero_division=0)["f1"]
    support = np.bincount(refs, minlength=num_classes).tolist()

    f1_metric = load_metric("f1")
    return {
        "accuracy": load_metric("accuracy").compute(predictions=preds, references=refs)["accuracy"],
        "accuracy_ci95": list(accuracy_interval(int((preds == refs).sum()), int(refs.size))),
        "macro_f1": f1_metric.compute(predictions=preds, references=refs, average="macro", zero_division=0)[
            "f1"
        ],
        "weighted_f1": f1_metric.compute(
            predictions=preds, references=refs, average="weighted", zero_division=0
        )["f1"],
        "per_class": {
            name: {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i]}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": load_metric("confusion_matrix").compute(
            predictions=preds, references=refs, labels=every_class
        )["confusion_matrix"],
    }


def negative_log_likelihood(logits: np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Mean cross-entropy of ``logits`` (N, C) against class ids, in float64. Any per-row shift of the
    logits (log-probabilities included) gives the same value."""
    log_probs = log_softmax(np.asarray(logits, dtype=np.float64), axis=-1)
    labels = _class_ids(labels, "labels", log_probs.shape[-1])
    return float(-log_probs[np.arange(labels.size), labels].mean())


@dataclass(frozen=True)
class ReliabilityBins:
    """Top-label confidence in equal-width bins ``(edges[i], edges[i + 1]]``: images, mean confidence and
    accuracy per bin (NaN where a bin is empty)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean of |accuracy - confidence| over the bins."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.counts[filled] * gaps).sum() / self.counts.sum())


def reliability_bins(
    probs: np.ndarray, labels: Sequence[int] | np.ndarray, bins: int = 15
) -> ReliabilityBins:
    """Bin each image by its top score (the confidence) and record whether the top class was right."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty (N, C) array, got shape {probs.shape}")
    labels = _class_ids(labels, "labels", probs.shape[1])
    if labels.size != probs.shape[0]:
        raise ValueError(f"probs has {probs.shape[0]} rows but there are {labels.size} labels")
    confidence, correct = probs.max(-1), (probs.argmax(-1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # right=True: bin i holds edges[i] < confidence <= edges[i + 1] (a confidence of 1.0 lands in the last).
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):  # empty bins: 0 / 0 = NaN, on purpose
        mean_conf = np.bincount(which, confidence, minlength=bins) / counts
        accuracy = np.bincount(which, correct, minlength=bins) / counts
    return ReliabilityBins(edges, counts, mean_conf, accuracy)


def expected_calibration_error(
    probs: np.ndarray, labels: Sequence[int] | np.ndarray, bins: int = 15
) -> float:
    """Top-label ECE over ``bins`` equal-width confidence bins (Guo et al., 2017): 0 when, in every bin,
    the share of right answers equals the mean confidence."""
    return reliability_bins(probs, labels, bins).ece
