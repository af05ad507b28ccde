"""Several processes (gloo on the CPU, via ``accelerate launch``) give the single-process results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import HASH_ONLY, make_learnable_folder

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


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[str]]:
    """Two identical 2-process trainings (with mixup), each process recording its augmentation draws
    (tests/record_draws.py): the data folder, the two output folders and the two logs."""
    tmp = tmp_path_factory.mktemp("two_runs")
    data = make_learnable_folder(tmp / "data", per_class=12)  # 25 train images: 3 steps of 2 x 4 per epoch
    outs, logs = [tmp / "a", tmp / "b"], []
    for out in outs:
        logs.append(_run([
            *_launch(2), "tests/record_draws.py", *HASH_ONLY,
            "--data-dir", str(data), "--cache-dir", str(tmp / "cache"),
            "--output-dir", str(out), "--pretrained", "false", "--model-name", "test_resnet", "--image-size",
            "32", "--epochs", "2", "--batch-size", "4", "--eval-batch-size", "4", "--mixup-alpha", "0.4",
            "--report-to", "none",
        ]))  # fmt: skip
    return data, outs, logs


def test_two_processes_train_and_evaluate_exactly_like_one(two_runs, tmp_path: Path) -> None:
    data, (out, _), _ = two_runs
    cache = str(out.parent / "cache")
    results = json.loads((out / "results.json").read_text())
    assert results["num_processes"] == 2 and results["status"] == "completed"
    fit = results["calibration"]["val_fit_set"]
    assert fit["nll_after"] <= fit["nll_before"]

    # An eval batch of 4 over 2 processes leaves ragged last batches that Accelerate pads with repeats:
    # gather_for_metrics must drop them, so the counts and metrics match one process exactly.
    evaluate = ["--model-dir", str(out / "model"), *HASH_ONLY, "--data-dir", str(data), "--cache-dir", cache,
                "--split", "test", "--eval-batch-size", "4"]  # fmt: skip
    _run(
        [
            sys.executable,
            "-m",
            "trashnet_hf.training.evaluation",
            *evaluate,
            "--metrics-file",
            str(tmp_path / "m1.json"),
        ]
    )
    _run(
        [
            *_launch(2),
            "-m",
            "trashnet_hf.training.evaluation",
            *evaluate,
            "--metrics-file",
            str(tmp_path / "m2.json"),
        ]
    )
    one = json.loads((tmp_path / "m1.json").read_text())
    two = json.loads((tmp_path / "m2.json").read_text())
    # The loss is a float mean over other batch partitions: equal to rounding (1.05374312 against
    # 1.05374324 seen here); the counts and every metric made of them are exact.
    assert one.pop("loss") == pytest.approx(two.pop("loss"), rel=1e-6)
    assert one == two
    n_test = sum(results["data_report"]["splits"]["test"].values())
    assert sum(map(sum, one["confusion_matrix"])) == n_test
    assert one["accuracy"] == results["metrics"]["test"]["accuracy"]


def test_each_process_draws_its_own_augmentation_and_two_runs_agree(two_runs) -> None:
    """Per-process seeds (seed + rank): the two processes' crop/flip/jitter and mixup draws differ, two
    identical 2-process runs are still equal, and progress counts each process's own steps to 100%."""
    _, outs, logs = two_runs
    draws = [[json.loads((out / f"draws_{rank}.json").read_text()) for rank in (0, 1)] for out in outs]
    (rank0, rank1), _ = draws
    assert len(rank0) == len(rank1) == 6  # each process trained its own 3 batches a epoch
    for mine, theirs in zip(rank0, rank1, strict=True):
        assert mine["torch"] != theirs["torch"]  # crop, flip, jitter
        assert mine["numpy"] != theirs["numpy"]  # mixup
    assert draws[0] == draws[1]  # reproducible for a given number of processes
    a, b = (json.loads((out / "results.json").read_text()) for out in outs)
    assert a["history"] == b["history"] and a["metrics"] == b["metrics"]
    wa, wb = (load_file(out / "model" / "model.safetensors") for out in outs)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert "step 6/6 (100%)" in logs[0]  # not "step 6/12 (50%)": the total counts one process's steps
