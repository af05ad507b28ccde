"""Several processes (gloo on the CPU, via ``accelerate launch``) give the single-process results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_learnable_folder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _launch(n: int) -> list[str]:
    # accelerate 1.15 runs `launch --cpu` as ONE process unless mpirun is set up; torchrun processes on
    # the CPU (gloo) come from --multi_gpu with ACCELERATE_USE_CPU=1 (set in _run).
    cli = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu"]
    return [
        *cli,
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def test_two_processes_train_and_evaluate_exactly_like_one(tmp_path: Path) -> None:
    data = make_learnable_folder(tmp_path / "data", per_class=12)
    cache = str(tmp_path / "cache")
    out = tmp_path / "out"
    _run([
        *_launch(2), "train.py", "--data-dir", str(data), "--cache-dir", cache, "--output-dir", str(out),
        "--pretrained", "false", "--image-size", "32", "--epochs", "2", "--batch-size", "4",
        "--eval-batch-size", "4", "--report-to", "none",
    ])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["num_processes"] == 2 and results["status"] == "completed"
    assert results["calibration"]["val"]["nll_after"] <= results["calibration"]["val"]["nll_before"]

    # An eval batch of 4 over 2 processes leaves ragged last batches that Accelerate pads with repeats:
    # gather_for_metrics must drop them, so the counts and metrics match one process exactly.
    evaluate = ["--model-dir", str(out / "model"), "--data-dir", str(data), "--cache-dir", cache,
                "--split", "test", "--eval-batch-size", "4"]  # fmt: skip
    _run(
        [
            sys.executable,
            "-m",
            "trashnet_hf.evaluation",
            *evaluate,
            "--metrics-file",
            str(tmp_path / "m1.json"),
        ]
    )
    _run(
        [*_launch(2), "-m", "trashnet_hf.evaluation", *evaluate, "--metrics-file", str(tmp_path / "m2.json")]
    )
    one = json.loads((tmp_path / "m1.json").read_text())
    two = json.loads((tmp_path / "m2.json").read_text())
    assert one == two
    n_test = sum(results["data_report"]["splits"]["test"].values())
    assert sum(map(sum, one["confusion_matrix"])) == n_test
    assert one["accuracy"] == results["metrics"]["test"]["accuracy"]
