"""The main job on a tiny synthetic dataset, on the CPU: outputs, loss, pipeline(), timm, flags, resume."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import pipeline

from tests.conftest import CLASS_COLOURS, CLASSES, make_learnable_folder
from trashnet_hf.config import TrainConfig
from trashnet_hf.training import train

ROOT = Path(__file__).resolve().parents[1]


def _cfg(data_dir: Path, out: Path, cache_dir: str, **kw) -> TrainConfig:
    base = {
        "data_dir": str(data_dir),
        "output_dir": str(out),
        "cache_dir": cache_dir,
        "pretrained": False,
        "image_size": 32,
        "epochs": 4,
        "batch_size": 8,
        "eval_batch_size": 16,
        "learning_rate": 3e-3,
        "warmup_ratio": 0.0,
        "logging_steps": 1,
        "patience": 0,
        "report_to": "none",
    }
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("smoke")
    data = make_learnable_folder(tmp / "data")
    # W&B in offline mode (conftest sets WANDB_MODE=offline): the real tracker code runs, no network.
    cfg = _cfg(data, tmp / "out", str(tmp / "cache"), epochs=5, report_to="wandb")
    return cfg, train(cfg)


def test_smoke_run_learns_and_writes_every_output(smoke) -> None:
    cfg, result = smoke
    out = Path(cfg.output_dir)
    assert result.status == "completed"
    for name in (
        "model/config.json",
        "model/model.safetensors",
        "results.json",
        "confusion_matrix.png",
        "curves.png",
        "data_report.json",
        "split_manifest.csv",
        "config.json",
    ):
        assert (out / name).is_file(), name
    assert list((out / "checkpoints").glob("step_*/trainer_state.json"))
    results = json.loads((out / "results.json").read_text())
    history = results["history"]
    assert len(history) == 5
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # loss falls
    for split in ("train", "val", "test"):
        assert set(results["overfitting"][split]) == {"loss", "accuracy", "macro_f1", "weighted_f1"}
        assert len(results["metrics"][split]["confusion_matrix"]) == len(CLASSES)
    assert results["config"]["epochs"] == 5 and results["data_report"]["num_images"] == 48
    assert results["train_images_per_s"] > 0 and results["wall_time_s"] > 0
    # Colours are easy: the best model separates the classes on held-out images.
    assert results["metrics"]["test"]["accuracy"] >= 0.8


def test_smoke_run_is_tracked_in_wandb_offline(smoke) -> None:
    cfg, result = smoke
    out = Path(cfg.output_dir)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert result.results["wandb_sync"] == f"wandb sync {runs[0]}"
    tables = list(runs[0].glob("files/media/table/val/predictions_*.table.json"))
    assert len(tables) == 5  # one prediction table per epoch
    columns = json.loads(tables[-1].read_text())["columns"]
    assert columns == ["image", "truth", "prediction", *(f"score_{c}" for c in CLASSES)]
    assert list(runs[0].glob("files/media/images/test/confusion_matrix_*.png"))


def test_saved_model_serves_with_pipeline_and_loads_in_timm(smoke) -> None:
    cfg, _ = smoke
    model_dir = Path(cfg.output_dir) / "model"
    classifier = pipeline("image-classification", model=str(model_dir), device="cpu")
    red = Image.new("RGB", (80, 60), CLASS_COLOURS[0])
    preds = classifier(red, top_k=3)
    assert {p["label"] for p in preds} == set(CLASSES)
    assert preds[0]["label"] == "alpha"

    timm_model = timm.create_model(f"local-dir:{model_dir}", pretrained=True)
    saved = load_file(model_dir / "model.safetensors")
    ours = timm_model.state_dict()
    assert set(ours) == set(saved)
    assert all(torch.equal(ours[k], saved[k]) for k in saved)


def _run_train(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


@pytest.mark.slow
def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    data = make_learnable_folder(tmp_path / "data", per_class=24)
    common = [
        "--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"), "--pretrained", "false",
        "--image-size", "48", "--epochs", "4", "--batch-size", "8", "--logging-steps", "1",
        "--patience", "0", "--report-to", "wandb", "--warmup-ratio", "0.2",
    ]  # fmt: skip
    full = _run_train([*common, "--output-dir", str(tmp_path / "full")])
    assert full.wait(timeout=600) == 0, full.stdout.read()

    part = tmp_path / "part"
    proc = _run_train([*common, "--output-dir", str(part)])
    deadline = time.monotonic() + 300
    while not list((part / "checkpoints").glob("step_*/trainer_state.json")):
        assert proc.poll() is None, "training ended before its first checkpoint: " + proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # after the first epoch's checkpoint, somewhere in epoch 2
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log
    assert "SIGTERM received" in log and "--resume-from-checkpoint" in log
    assert not (part / "results.json").exists()

    resumed = _run_train([*common, "--output-dir", str(part), "--resume-from-checkpoint", "latest"])
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log
    assert "Resumed from" in log

    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((part / "results.json").read_text())
    assert a["metrics"] == b["metrics"]
    assert a["history"] == b["history"]
    wa = load_file(tmp_path / "full" / "model" / "model.safetensors")
    wb = load_file(part / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    last = sorted((tmp_path / "full" / "checkpoints").glob("step_*"))[-1].name
    la = load_file(tmp_path / "full" / "checkpoints" / last / "model.safetensors")
    lb = load_file(part / "checkpoints" / last / "model.safetensors")
    assert all(torch.equal(la[k], lb[k]) for k in la)
    # The resumed session continued the same W&B run: one run id, one offline folder per session.
    run_ids = {p.name.split("-")[3] for p in (part / "wandb").glob("offline-run-*")}
    assert len(run_ids) == 1 and len(list((part / "wandb").glob("offline-run-*"))) == 2


def _train_main():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _train_main()(["--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for name, spec in TrainConfig.__dataclass_fields__.items():
        assert "--" + name.replace("_", "-") in help_text, name
        assert spec.metadata.get("help"), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-dir", "/no/such/data"], "--data-dir"),
        (["--image-size", "0"], "--image-size"),
        (["--train-share", "0.5", "--val-share", "0.2", "--test-share", "0.2"], "must sum to 1"),
        (["--epochs", "0"], "--epochs"),
        (["--resume-from-checkpoint", "/no/such/ckpt"], "--resume-from-checkpoint"),
    ],
)
def test_bad_flags_fail_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as info:
        _train_main()([*args, "--output-dir", str(out)])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_pretrained_offline_fails_fast_naming_the_flag(tmp_path: Path) -> None:
    data = make_learnable_folder(tmp_path / "data", per_class=4)
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--data-dir",
            str(data),
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 1
    assert "--pretrained false" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60  # mostly interpreter start-up; no retries


def test_cpu_allocator_tuning_is_accepted_by_glibc() -> None:
    import platform

    from trashnet_hf.training import tune_cpu_allocator

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert tune_cpu_allocator() is True  # mallopt returns 0 for a value it rejects
