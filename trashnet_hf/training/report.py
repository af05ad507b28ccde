"""Console summaries of a finished run."""

from __future__ import annotations

from typing import Any

from trashnet_hf.core.results import count_test_images
from trashnet_hf.training import calibration


def format_final_table(results: dict[str, Any]) -> str:
    """Train/val/test loss, accuracy and F1 side by side (the overfitting report), then per-class test F1."""
    labels = {"train": "train", "val": "val (fit set)", "test": "test (held out)"}
    lines = [f"{'split':<15} {'loss':>8} {'accuracy':>9} {'macro-F1':>9} {'weighted-F1':>12}"]
    for split, label in labels.items():
        m = results["overfitting"][split]
        scores = f"{m['accuracy']:>9.3f} {m['macro_f1']:>9.3f} {m['weighted_f1']:>12.3f}"
        lines.append(f"{label:<15} {m['loss']:>8.4f} {scores}")
    fitted = "picked the best epoch and fitted T" if "calibration" in results else "picked the best epoch"
    lines.append(f"val {fitted}, so its figures are in-sample; test is the held-out measure.")
    o = results["overfitting"]
    lines.append(
        f"train-val accuracy gap {o['gap_train_minus_val_accuracy']:+.3f}, "
        f"val-test gap {o['gap_val_minus_test_accuracy']:+.3f}; best epoch {results['best_epoch']} "
        f"of {results['epochs_run']} ({results['status']})"
    )
    test = results["metrics"]["test"]
    per_class = ", ".join(f"{c} {v['f1']:.2f}" for c, v in test["per_class"].items())
    lines.append(f"test F1 per class: {per_class}")
    low, high = test["accuracy_ci95"]
    lines.append(
        f"test accuracy {test['accuracy']:.3f} on {count_test_images(results)} images: "
        f"95% interval {low:.3f}-{high:.3f}"
    )
    if "calibration" in results:  # absent with --calibrate false
        lines.append(calibration.describe(results["calibration"]))
    return "\n".join(lines)
