"""Console summaries of a finished run."""

from __future__ import annotations

from typing import Any


def format_final_table(results: dict[str, Any]) -> str:
    """Train/val/test loss, accuracy and F1 side by side (the overfitting report), then per-class test F1."""
    lines = [f"{'split':<6} {'loss':>8} {'accuracy':>9} {'macro-F1':>9} {'weighted-F1':>12}"]
    for split in ("train", "val", "test"):
        m = results["overfitting"][split]
        scores = f"{m['accuracy']:>9.3f} {m['macro_f1']:>9.3f} {m['weighted_f1']:>12.3f}"
        lines.append(f"{split:<6} {m['loss']:>8.4f} {scores}")
    o = results["overfitting"]
    lines.append(
        f"train-val accuracy gap {o['gap_train_minus_val_accuracy']:+.3f}, "
        f"val-test gap {o['gap_val_minus_test_accuracy']:+.3f}; best epoch {results['best_epoch']} "
        f"of {results['epochs_run']} ({results['status']})"
    )
    per_class = results["metrics"]["test"]["per_class"]
    lines.append("test F1 per class: " + ", ".join(f"{c} {v['f1']:.2f}" for c, v in per_class.items()))
    return "\n".join(lines)
