"""Console summaries of a finished run."""

from __future__ import annotations

from typing import Any

from trashnet_hf import calibration


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
        f"test accuracy {test['accuracy']:.3f} on {_test_images(results)} images: "
        f"95% interval {low:.3f}-{high:.3f}"
    )
    if "calibration" in results:  # absent with --calibrate false
        lines.append(calibration.describe(results["calibration"]))
    return "\n".join(lines)


SMOKE_TEST_IMAGES = 100  # below this a test accuracy is too coarse to say how well the model sorts


def _test_images(results: dict[str, Any]) -> int:
    return sum(v["support"] for v in results["metrics"]["test"]["per_class"].values())


def smoke_run_notice(results: dict[str, Any]) -> str | None:
    """A plain warning when the test split is too small for its accuracy to mean much, else None."""
    n = _test_images(results)
    if n >= SMOKE_TEST_IMAGES:
        return None
    return (
        f"Only {n} test images: a smoke run that shows the pipeline works end to end, not how well the "
        "model sorts waste. For real numbers train on all of TrashNet (README: 'Offline, with a real "
        "pretrained backbone', or bench/accuracy.py)."
    )
