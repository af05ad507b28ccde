"""Reading a run's ``results.json``: what the console report, train.py and the model card all say of it.

Torch-free, so building a card or a Space needs no training stack.
"""

from __future__ import annotations

from typing import Any

# Below this many test images, a test accuracy is too coarse to say how well the model sorts (at 50, the
# 95% interval of an 80% accuracy spans about 67-89%); the quickstart's sample gives about 60.
SMOKE_TEST_IMAGES = 50


def count_test_images(results: dict[str, Any]) -> int:
    """How many images the run's test split held."""
    return sum(v["support"] for v in results["metrics"]["test"]["per_class"].values())


def smoke_run_notice(results: dict[str, Any]) -> str | None:
    """A plain warning when the test split is too small for its accuracy to mean much, else None."""
    n = count_test_images(results)
    if n >= SMOKE_TEST_IMAGES:
        return None
    return (
        f"Only {n} test images: a smoke run that shows the pipeline works end to end, not how well the "
        "model sorts waste. For real numbers train on all of TrashNet (docs/training.md, or "
        "bench/accuracy.py)."
    )
