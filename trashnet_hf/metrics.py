"""Classification metrics through the ``evaluate`` library, offline.

``evaluate.load("accuracy")`` fetches the metric's code from the Hub, so the modules ship inside the
package (``metrics_modules/*.py``, same interfaces as the Hub's evaluate-metric modules) and are loaded
from their local paths; that needs no network and works with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
from scipy.stats import binomtest

MODULES_DIR = Path(__file__).parent / "metrics_modules"


@functools.cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """One of the packaged metric modules: accuracy, precision, recall, f1 or confusion_matrix."""
    path = MODULES_DIR / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"No packaged metric {name!r} in {MODULES_DIR}")
    # keep_in_memory: no Arrow cache files under HF_HOME for a one-shot compute.
    return evaluate.load(str(path), keep_in_memory=True)


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
