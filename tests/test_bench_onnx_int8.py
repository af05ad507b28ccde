"""bench/onnx_int8.py, where int8 went when it left the product: its flags, its one-line refusals, and a
tiny end-to-end run whose float32 accuracy is checked against the PyTorch model's."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trashnet_hf.core.manifest import read_manifest
from trashnet_hf.serving import onnx as export_onnx
from trashnet_hf.serving.classifier import Classifier, open_image

BENCH = Path(__file__).resolve().parents[1] / "bench" / "onnx_int8.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("onnx_int8", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_lists_its_flags() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    for flag in ("--calibration-dir", "--test-dir", "--calibration-images", "--repeats"):
        assert flag in done.stdout


def test_a_model_folder_without_a_manifest_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    done = subprocess.run(
        [sys.executable, str(BENCH), str(tmp_path / "model")], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "split_manifest.csv" in done.stderr.splitlines()[-1] and "--calibration-dir" in done.stderr


@pytest.mark.slow
def test_tiny_end_to_end_run(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = bench_module()
    bench.main([str(trained_run / "model"), "--repeats", "2", "--calibration-images", "3"])
    out = capsys.readouterr().out
    accuracy = re.search(r"float32 ([\d.]+)%, int8 ([\d.]+)% \(([+-][\d.]+) points\)", out)
    assert accuracy, out
    assert "calibrated on 3 images" in out  # 6 validation photos, every other one
    for batch in (1, 32):
        assert re.search(rf"batch +{batch}: float32 [\d.]+ ms, int8 [\d.]+ ms: int8 speed-up [\d.]+x", out)

    # The printed float32 accuracy is the PyTorch model's on the run's test photos (parity 1e-4).
    rows = [r for r in read_manifest(trained_run / "split_manifest.csv") if r["split"] == "test"]
    torch_model = Classifier.load(trained_run / "model", device="cpu")
    top = [p[0]["label"] for p in torch_model.predict([open_image(r["path"]) for r in rows], top_k=1)]
    expected = 100 * np.mean([t == r["label"] for t, r in zip(top, rows, strict=True)])
    assert float(accuracy.group(1)) == pytest.approx(expected, abs=0.01)

    # The quantised file really is int8 (QDQ nodes) and still runs at a dynamic batch size.
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    assert export_onnx.main([str(trained_run / "model"), "--output", str(fp32)]) == 0
    classifier = Classifier.load(fp32, "cpu")
    calibration = list(export_onnx.batches(classifier, [Path(r["path"]) for r in rows[:8]], batch_size=4))
    bench.quantize_int8(fp32, int8, calibration)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(int8)).graph.node}
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    assert export_onnx.onnx_logits(session, calibration[0]).shape == (4, len(classifier.labels))
