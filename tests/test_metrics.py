"""metrics.py: packaged evaluate modules agree with sklearn, cover absent classes, and need no Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from trashnet_hf.training.metrics import compute_metrics, load_metric

CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, len(CLASSES), size=200)
    # Mostly right, like a trained model, so the scores are not all near chance.
    preds = np.where(rng.random(200) < 0.6, refs, rng.integers(0, len(CLASSES), size=200))
    result = compute_metrics(preds, refs, CLASSES)

    assert result["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    assert result["macro_f1"] == pytest.approx(f1_score(refs, preds, average="macro"))
    assert result["weighted_f1"] == pytest.approx(f1_score(refs, preds, average="weighted"))
    precision, recall, f1, support = precision_recall_fscore_support(refs, preds, labels=range(len(CLASSES)))
    for i, name in enumerate(CLASSES):
        assert result["per_class"][name] == pytest.approx(
            {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i]}
        )
    assert result["confusion_matrix"] == confusion_matrix(refs, preds).tolist()
    json.dumps(result)  # plain Python values, ready for a metrics file or a tracker


def test_absent_classes_do_not_crash_and_score_zero() -> None:
    # "metal" (2) is never a reference and never predicted; "trash" (5) is predicted but never true.
    refs = [0, 0, 1, 3, 4, 4]
    preds = [0, 1, 1, 3, 4, 5]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        result = compute_metrics(preds, refs, CLASSES)

    assert result["per_class"]["metal"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["per_class"]["trash"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["per_class"]["cardboard"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    # macro F1 averages over classes seen in refs or preds (sklearn's default), not over "metal".
    assert result["macro_f1"] == pytest.approx(f1_score(refs, preds, average="macro", zero_division=0))
    assert result["macro_f1"] == pytest.approx(np.mean([2 / 3, 2 / 3, 1.0, 2 / 3, 0.0]))
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (len(CLASSES), len(CLASSES))
    assert not matrix[2].any() and not matrix[:, 2].any()
    assert matrix[4, 5] == 1  # row = truth (plastic), column = prediction (trash)


def test_confusion_matrix_orientation_and_shape() -> None:
    result = compute_metrics([1, 1, 2], [0, 1, 1], ["a", "b", "c", "d"])
    assert result["confusion_matrix"] == [[0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert result["accuracy"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("preds", "refs", "match"),
    [
        ([0, 1], [0], "differ in length"),
        ([0, 6], [0, 1], r"\[0, 6\)"),
        ([-1, 0], [0, 1], r"\[0, 6\)"),
        ([], [], "non-empty"),
        ([0.0, 1.0], [0, 1], "class ids"),
    ],
)
def test_rejects_invalid_inputs(preds: list, refs: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compute_metrics(preds, refs, CLASSES)


def test_unknown_metric_is_an_error() -> None:
    with pytest.raises(ValueError, match="No packaged metric"):
        load_metric("bleu")


def test_one_packaged_module_serves_every_metric() -> None:
    """One local evaluate module (config_name picks the metric), not one near-identical file per metric."""
    from trashnet_hf.training.metrics import METRICS

    loaded = [load_metric(name) for name in METRICS]
    assert [m.config_name for m in loaded] == list(METRICS)
    assert len({type(m) for m in loaded}) == 1


@pytest.mark.slow  # a fresh interpreter importing evaluate/datasets: ~8 s
def test_metrics_load_with_the_hub_switched_off_and_unreachable(tmp_path: Path) -> None:
    """A fresh process: nothing cached, HF_HUB_OFFLINE=1 and a dead endpoint, as on an offline machine."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HOME": str(tmp_path / "hf"),
    }
    code = (
        "from trashnet_hf.training.metrics import compute_metrics; "
        "print(compute_metrics([0, 1], [0, 0], 'ab'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "'accuracy': 0.5" in done.stdout
