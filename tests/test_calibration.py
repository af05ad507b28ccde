"""Temperature scaling: the metrics, the fit, the folded head, and a training run's calibrated model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax
from torch import nn
from transformers import AutoImageProcessor, pipeline

from trashnet_hf.core.model import load_model, save_model
from trashnet_hf.training import calibration, plots
from trashnet_hf.training.metrics import expected_calibration_error, negative_log_likelihood, reliability_bins
from trashnet_hf.training.report import format_final_table


def test_ece_matches_a_hand_computed_case() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.62, 0.38]])
    labels = np.array([0, 1, 1, 0])  # right, wrong, right, right
    # 15 bins of width 1/15: 0.9 -> (0.867, 0.933], 0.7 -> (0.667, 0.733], 0.62 -> (0.6, 0.667].
    # Bin 13: 2 images, accuracy 0.5, confidence 0.9; bin 10: 1, 1.0, 0.7; bin 9: 1, 1.0, 0.62.
    expected = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1.0 - 0.7) + 1 / 4 * abs(1.0 - 0.62)  # 0.37
    assert expected_calibration_error(probs, labels, bins=15) == pytest.approx(expected)
    bins = reliability_bins(probs, labels, bins=15)
    assert bins.counts.tolist() == [0] * 9 + [1, 1, 0, 0, 2, 0]
    assert bins.accuracy[13] == 0.5 and bins.confidence[13] == pytest.approx(0.9)
    assert np.isnan(bins.accuracy[0])  # an empty bin has no accuracy


def test_ece_bins_are_closed_on_the_right() -> None:
    # With 2 bins a confidence of exactly 0.5 belongs to (0, 0.5], and 1.0 to (0.5, 1].
    bins = reliability_bins(np.array([[0.5, 0.5], [1.0, 0.0]]), [0, 0], bins=2)
    assert bins.counts.tolist() == [1, 1]
    assert expected_calibration_error(np.array([[1.0, 0.0]]), [0]) == 0.0  # sure and right


def test_nll_is_torch_cross_entropy_and_ignores_row_shifts() -> None:
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(50, 6)) * 3, rng.integers(0, 6, 50)
    torch_nll = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    assert negative_log_likelihood(logits, labels) == pytest.approx(torch_nll)
    shifted = logits + rng.normal(size=(50, 1)) * 10
    assert negative_log_likelihood(shifted, labels) == pytest.approx(torch_nll)


class _FixedLogits(nn.Module):
    """A "model" whose logits are its input: predict() must hand them back as they are."""

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=pixel_values * 1.0)


def test_predict_gathers_logits_and_calibration_fits_on_them() -> None:
    """predict() gathers the logits themselves (softmax scores derive from them), so T is fitted on the
    model's logits. Confident logits show why: float32 softmax underflows past a gap of ~103, and logits
    rebuilt from those probabilities (the old log(max(p, tiny))) fit another T."""
    from accelerate import Accelerator

    from trashnet_hf.training.evaluation import predict

    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(60, 3)) * 150).astype(np.float32)
    p = softmax(logits.astype(np.float64) / 15, axis=-1)  # labels that want T = 15
    labels = (p.cumsum(-1) > rng.random((60, 1))).argmax(-1)
    batches = [
        {"pixels": torch.from_numpy(logits[i : i + 16]), "label": torch.from_numpy(labels[i : i + 16])}
        for i in range(0, 60, 16)
    ]
    preds = predict(Accelerator(cpu=True), _FixedLogits(), batches, nn.Identity())
    np.testing.assert_array_equal(preds.logits, logits)
    np.testing.assert_array_equal(preds.labels, labels)
    np.testing.assert_allclose(preds.probs, softmax(logits, axis=-1), atol=1e-6)
    fitted = calibration.fit_temperature(preds.logits, preds.labels)
    assert fitted == calibration.fit_temperature(logits.astype(np.float64), labels)
    tiny = np.nextafter(np.float32(0), np.float32(1))
    rebuilt = np.log(np.maximum(preds.probs.astype(np.float64), tiny))
    assert abs(calibration.fit_temperature(rebuilt, labels) - fitted) > 0.02 * fitted


@pytest.mark.parametrize("true_t", [0.6, 2.5])
def test_fit_recovers_a_known_temperature(true_t: float) -> None:
    rng = np.random.default_rng(7)
    calibrated = rng.normal(size=(8000, 6)) * 2.0
    # Labels drawn from softmax(calibrated): those logits are calibrated by construction, so the same
    # logits times true_t (over-confident for true_t > 1) need T = true_t to be calibrated again.
    p = softmax(calibrated, axis=-1)
    labels = (p.cumsum(-1) > rng.random((8000, 1))).argmax(-1)
    fitted = calibration.fit_temperature(calibrated * true_t, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    before = calibration.split_report(calibrated * true_t, labels, fitted)
    assert before["nll_after"] < before["nll_before"] and before["ece_after"] < before["ece_before"]


def test_empty_validation_is_refused() -> None:
    with pytest.raises(calibration.CalibrationError, match="N > 0"):
        calibration.fit_temperature(np.zeros((0, 6)), np.zeros(0, dtype=int))


def test_a_head_that_is_not_linear_is_refused() -> None:
    model = SimpleNamespace(
        timm_model=SimpleNamespace(get_classifier=nn.Identity), config=SimpleNamespace(architecture="x")
    )
    with pytest.raises(calibration.CalibrationError, match="--calibrate false"):
        calibration.set_temperature(model, 2.0)


def _images(run: Path) -> list[Image.Image]:
    """The tiny run's own photos (its data folder sits beside its output folder)."""
    return [Image.open(p).convert("RGB") for p in sorted((run.parent / "data").glob("*/*.jpg"))]


def _logits(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(pixel_values=pixels).logits


def test_folding_divides_the_logits_and_keeps_every_argmax(trained_run: Path) -> None:
    model = load_model(trained_run / "model")
    calibration.set_temperature(model, 1.0)  # the raw head of the trained model
    assert calibration.folded_temperature(model) == 1.0
    pixels = AutoImageProcessor.from_pretrained(trained_run / "model")(
        _images(trained_run), return_tensors="pt"
    )
    raw = _logits(model, pixels.pixel_values)
    for t in (0.5, 1.43, 3.0):
        calibration.set_temperature(model, t)
        folded = _logits(model, pixels.pixel_values)
        torch.testing.assert_close(folded, raw / t, atol=1e-5, rtol=1e-5)
        assert torch.equal(folded.argmax(-1), raw.argmax(-1))
        assert calibration.folded_temperature(model) == t
    calibration.set_temperature(model, 1.0)
    torch.testing.assert_close(_logits(model, pixels.pixel_values), raw, atol=1e-5, rtol=1e-5)


def test_training_run_saves_a_calibrated_model_and_reports_it(trained_run: Path) -> None:
    results = json.loads((trained_run / "results.json").read_text())
    block = results["calibration"]
    assert block["method"] == calibration.METHOD and block["bins"] == 15
    t = block["temperature"]
    assert calibration.MIN_T <= t <= calibration.MAX_T
    # T is fitted on val: its after-figures are in-sample and named so; test is the held-out figure.
    assert block["fitted_on"] == "val" and "val" not in block
    for key in ("val_fit_set", "test"):
        assert set(block[key]) == {"nll_before", "nll_after", "ece_before", "ece_after"}
    fit = block["val_fit_set"]
    assert fit["nll_after"] <= fit["nll_before"] + 1e-9  # T minimised the val NLL
    # results["metrics"] come from the saved (calibrated) model: its loss is the calibrated NLL.
    for split, key in (("val", "val_fit_set"), ("test", "test")):
        assert results["metrics"][split]["loss"] == pytest.approx(block[key]["nll_after"], rel=1e-4)
    config = json.loads((trained_run / "model" / "config.json").read_text())
    assert config[calibration.CONFIG_KEY] == pytest.approx(t)
    assert (trained_run / "reliability.png").stat().st_size > 0
    table = format_final_table(results)
    assert calibration.describe(block) in table
    assert "val (fit set) NLL" in table and "test (held out) NLL" in table
    rows = {line.split("  ")[0].strip() for line in table.splitlines()[1:4]}
    assert rows == {"train", "val (fit set)", "test (held out)"}
    assert "calibration" not in format_final_table({k: v for k, v in results.items() if k != "calibration"})


def test_pipeline_serves_the_scaled_scores(trained_run: Path, tmp_path: Path) -> None:
    t = json.loads((trained_run / "results.json").read_text())["calibration"]["temperature"]
    model = load_model(trained_run / "model")
    calibration.set_temperature(model, 1.0)  # uncalibrated
    images = _images(trained_run)[:12]
    pixels = AutoImageProcessor.from_pretrained(trained_run / "model")(images, return_tensors="pt")
    expected = torch.softmax(_logits(model, pixels.pixel_values) / t, dim=-1).numpy()
    calibration.set_temperature(model, t)
    shutil.copytree(trained_run / "model", tmp_path / "model")
    save_model(model, tmp_path / "model")
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    classifier = pipeline("image-classification", model=str(tmp_path / "model"), device="cpu")
    served = classifier(images, top_k=len(names))
    for row, top in zip(expected, served, strict=True):
        scores = {d["label"]: d["score"] for d in top}
        np.testing.assert_allclose([scores[n] for n in names], row, atol=1e-5)


def test_reliability_plot_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(200, 6)) * 4, rng.integers(0, 6, 200)
    path = plots.plot_reliability(calibration.reliability_panels(1.8, logits, labels), tmp_path / "r.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > img.height  # two panels side by side


# --- The "not sure" threshold -------------------------------------------------------------------------


def _scored(tops: list[float], right: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """3-class scores with the given top scores (class 0 on top) and labels that make each right or wrong."""
    tops_a = np.asarray(tops, dtype=np.float64)
    rest = (1 - tops_a) / 2
    probs = np.stack([tops_a, rest, rest], axis=1)
    return probs, np.where(right, 0, 1)


def _brute_force_threshold(tops: np.ndarray, right: np.ndarray) -> float:
    """The rule read literally: every observed top score t, the photos scoring t or more, the lowest t
    whose set is right 95% of the time (the upper clamp when none is), then the clamp."""
    passing = [t for t in sorted(set(tops.tolist())) if right[tops >= t].mean() >= 0.95]
    t = passing[0] if passing else 0.9
    return min(max(t, 0.5), 0.9)


def test_threshold_rule_counts_every_tie_of_a_score() -> None:
    # 40 right at 0.9; 10 at 0.7 (the 5 right ones first); 10 wrong at 0.55. At or above 0.7: 45 of 50,
    # 90%, so 0.7 fails although its 5 right ties alone would pass; at or above 0.9: 40 of 40.
    tops = [0.9] * 40 + [0.7] * 10 + [0.55] * 10
    right = [True] * 40 + [True] * 5 + [False] * 5 + [False] * 10
    threshold, rule = calibration.low_confidence_threshold(*_scored(tops, right))
    assert threshold == pytest.approx(0.9) and "95%" in rule and "60 validation photos" in rule
    # 8 of the 10 at 0.7 right instead: 48 of 50 = 96% at or above 0.7; 50 of 60 at or above 0.55.
    right = [True] * 48 + [False] * 12
    assert calibration.low_confidence_threshold(*_scored(tops, right))[0] == pytest.approx(0.7)
    report = calibration.threshold_report(0.7, *_scored(tops, right))
    assert report == {
        "images": 60, "flagged_share": pytest.approx(10 / 60),
        "accuracy_below": 0.0, "accuracy_at_or_above": pytest.approx(48 / 50),
    }  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
def test_threshold_rule_matches_the_rule_read_literally(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 400))
    tops = np.round(rng.uniform(0.35, 1.0, n), 2)  # rounded: many ties
    right = rng.random(n) < tops ** (0.3 + seed / 4)  # calibrated-ish to over-confident
    expected = _brute_force_threshold(tops, right)
    threshold, _ = calibration.low_confidence_threshold(*_scored(tops.tolist(), right.tolist()))
    assert threshold == pytest.approx(expected)


def test_threshold_is_clamped_and_falls_back_below_50_photos() -> None:
    # All right: every set passes, the lowest score (0.4) is the rule's t, clamped up to 0.5.
    assert calibration.low_confidence_threshold(*_scored([0.4] * 30 + [0.95] * 30, [True] * 60))[0] == 0.5
    # The best-scoring photos all wrong: no set passes, the upper clamp.
    tops, right = [0.99] * 10 + [0.8] * 50, [False] * 10 + [True] * 50
    assert calibration.low_confidence_threshold(*_scored(tops, right))[0] == 0.9
    threshold, rule = calibration.low_confidence_threshold(*_scored([0.99] * 49, [False] * 49))
    assert threshold == 0.6 and "49 validation photos, under the 50" in rule


def test_training_run_stores_the_threshold_in_config_and_results(trained_run: Path) -> None:
    from trashnet_hf.core.manifest import MANIFEST_FILE, read_manifest
    from trashnet_hf.serving.classifier import Classifier

    low = json.loads((trained_run / "results.json").read_text())["calibration"]["low_confidence"]
    config = json.loads((trained_run / "model" / "config.json").read_text())
    assert config["low_confidence_threshold"] == low["threshold"]
    assert config["low_confidence_rule"] == low["rule"]
    assert low["target_accuracy"] == 0.95 and low["range"] == [0.5, 0.9] and low["min_images"] == 50
    # The tiny run's validation split is far under 50 photos: the default, said so.
    val = [r for r in read_manifest(trained_run / MANIFEST_FILE) if r["split"] == "val"]
    assert 0 < len(val) < 50 and low["fallback"] is True and low["threshold"] == 0.6
    assert f"{len(val)} validation photos, under the 50" in low["rule"]
    # The reported split of val, recomputed from the saved (calibrated) model on the val photos.
    classifier = Classifier.load(trained_run / "model", device="cpu")
    top = [r[0] for r in classifier.predict([Image.open(row["path"]).convert("RGB") for row in val], top_k=1)]
    flagged = [t["score"] < low["threshold"] for t in top]
    right = [t["label"] == row["label"] for t, row in zip(top, val, strict=True)]
    fit = low["val_fit_set"]
    assert fit["images"] == len(val) and fit["flagged_share"] == pytest.approx(np.mean(flagged))
    above = [r for r, f in zip(right, flagged, strict=True) if not f]
    assert fit["accuracy_at_or_above"] == (pytest.approx(np.mean(above)) if above else None)
    assert low["test"]["images"] > 0
