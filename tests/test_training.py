"""The main job on a tiny synthetic dataset, on the CPU: outputs, loss, pipeline(), timm, flags, resume."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import pipeline

from tests.conftest import CLASS_COLOURS, CLASSES, HASH_ONLY, make_learnable_folder
from trashnet_hf.core import progress
from trashnet_hf.core.config import ConfigError, TrainConfig
from trashnet_hf.data import DataError
from trashnet_hf.training import loop as training
from trashnet_hf.training.checkpointing import checkpoints
from trashnet_hf.training.loop import train

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
        "near_duplicate_threshold": 0,  # HASH_ONLY
    }
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("smoke")
    data = make_learnable_folder(tmp / "data")
    # W&B in offline mode (conftest sets WANDB_MODE=offline): the real tracker code runs, no network.
    cfg = _cfg(data, tmp / "out", str(tmp / "cache"), epochs=5, report_to="wandb")
    return cfg, train(cfg)


@pytest.mark.slow  # the smoke run starts W&B offline: ~15 s
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
        "reliability.png",
        "data_report.json",
        "split_manifest.csv",
        "config.json",
    ):
        assert (out / name).is_file(), name
    assert list((out / "checkpoints").glob("checkpoint_*/custom_checkpoint_0.pkl"))
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


@pytest.mark.slow  # the smoke run starts W&B offline: ~15 s
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
    assert list(runs[0].glob("files/media/images/test/reliability_*.png"))


@pytest.mark.slow  # the smoke run starts W&B offline: ~15 s
def test_trained_model_serves_with_pipeline(smoke) -> None:
    cfg, _ = smoke
    classifier = pipeline("image-classification", model=str(Path(cfg.output_dir) / "model"), device="cpu")
    preds = classifier(Image.new("RGB", (80, 60), CLASS_COLOURS[0]), top_k=3)
    assert {p["label"] for p in preds} == set(CLASSES)
    assert preds[0]["label"] == "alpha"  # red: the trained model, not just a loadable one


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
        *HASH_ONLY, "--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"), "--pretrained", "false",
        "--image-size", "48", "--epochs", "4", "--batch-size", "8", "--logging-steps", "1",
        "--patience", "0", "--report-to", "wandb", "--warmup-ratio", "0.2",
    ]  # fmt: skip
    full = _run_train([*common, "--output-dir", str(tmp_path / "full")])
    assert full.wait(timeout=600) == 0, full.stdout.read()

    part = tmp_path / "part"
    proc = _run_train([*common, "--output-dir", str(part)])
    deadline = time.monotonic() + 300
    while not list((part / "checkpoints").glob("checkpoint_*/custom_checkpoint_0.pkl")):
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
    # The newest checkpoint of each run (numbered per save, so the interrupted run's is one further on).
    la = load_file(checkpoints(tmp_path / "full")[-1] / "model.safetensors")
    lb = load_file(part / "checkpoints" / checkpoints(part)[-1].name / "model.safetensors")
    assert all(torch.equal(la[k], lb[k]) for k in la)
    # The resumed session continued the same W&B run: one run id, one offline folder per session.
    run_ids = {p.name.split("-")[3] for p in (part / "wandb").glob("offline-run-*")}
    assert len(run_ids) == 1 and len(list((part / "wandb").glob("offline-run-*"))) == 2


@pytest.mark.slow  # a train.py process: ~30 s
def test_a_log_written_to_a_file_has_no_carriage_return(tmp_path: Path) -> None:
    """Off a terminal (stdout and stderr into a file) no bar redraws itself: neither ours nor datasets'
    map, transformers' weight loading and "Writing model shards", or W&B's; progress ends at 100%."""
    data = make_learnable_folder(tmp_path / "data", per_class=8)
    log = tmp_path / "train.log"
    with log.open("w") as stream:
        subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *HASH_ONLY, "--data-dir", str(data), "--output-dir",
             str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--pretrained", "false",
             "--model-name", "test_resnet", "--image-size", "32", "--epochs", "1", "--batch-size", "4",
             "--logging-steps", "2", "--report-to", "wandb"],
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=stream, stderr=subprocess.STDOUT,
            timeout=600, check=True,
        )  # fmt: skip
    text = log.read_text()
    assert "Writing model shards" not in text and "Preparing images" not in text
    assert "\r" not in text
    assert "step 4/4 (100%)" in text  # 17 train images, batches of 4: 4 steps, the last one logged


def test_cpu_allocator_tuning_is_accepted_by_glibc() -> None:
    import platform

    from trashnet_hf.training.loop import tune_cpu_allocator

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert tune_cpu_allocator() is True  # mallopt returns 0 for a value it rejects


@pytest.mark.slow  # four short trainings: ~3 s
def test_core_paths_with_scripted_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Early stopping, the best epoch (not the last) in model/, gradient accumulation, step checkpoints
    and their rotation, one W&B name per quantity, progress as log lines off a terminal, the EMA decay
    that acted (--ema-decay once --ema-warmup-steps end) in the history and the tracker, and
    --channels-last false honoured by the model and every batch it sees."""
    scores = iter([0.2, 0.5, 0.4, 0.3, 0.9, 0.9])  # best at epoch 2; patience 2 stops after epoch 4
    weights: list[dict[str, torch.Tensor]] = []
    real_val_predictions = training.val_predictions

    def scripted(parts):
        preds, metrics = real_val_predictions(parts)
        # The weights validated and kept: the EMA's (on by default), else the model's.
        state = parts.accelerator.unwrap_model(parts.eval_model).timm_model.state_dict()
        weights.append({k: v.detach().clone() for k, v in state.items()})
        return preds, {**metrics, "macro_f1": next(scores)}

    layouts: set[tuple[bool, bool]] = set()  # (batch, conv weights) contiguous NCHW, at every forward
    real_build = training.build_model

    def build_recording(*args, **kwargs):
        model = real_build(*args, **kwargs)
        conv = next(w for w in model.parameters() if w.dim() == 4)
        model.register_forward_pre_hook(
            lambda m, a, kw: layouts.add((kw["pixel_values"].is_contiguous(), conv.is_contiguous())),
            with_kwargs=True,
        )  # copied with the model into the EMA, so its validation passes record too
        return model

    monkeypatch.setattr(training, "build_model", build_recording)
    logged: list[dict] = []
    monkeypatch.setattr(training, "val_predictions", scripted)
    monkeypatch.setattr(training.tracking, "log_metrics", lambda acc, values, step: logged.append(values))
    monkeypatch.setattr(progress, "PROGRESS_LOG_SECONDS", 0.0)
    data = make_learnable_folder(tmp_path / "data", per_class=8)  # 17 train images: 4 batches of 4
    out = tmp_path / "out"
    cfg = _cfg(
        data, out, str(tmp_path / "cache"), epochs=6, patience=2, batch_size=4,
        gradient_accumulation_steps=2, checkpoint_every_steps=1, model_name="test_resnet",
        ema_decay=0.9, ema_warmup_steps=3, channels_last=False,
        calibrate=False,  # the saved weights are compared with epoch 2's as they were validated
    )  # fmt: skip
    with caplog.at_level(logging.INFO):
        result = train(cfg)

    assert result.status == "early_stopped"
    assert result.results["best_epoch"] == 2 and result.results["epochs_run"] == 4
    saved = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(saved[k], weights[1][k]) for k in saved)  # epoch 2's weights...
    assert not all(torch.equal(saved[k], weights[3][k]) for k in saved)  # ...not the last epoch's
    # 4 batches per epoch, 2 per update: 2 optimisation steps per epoch, each logged once.
    step_logs = [v for v in logged if "train/loss" in v]
    assert len(step_logs) == 4 * 2
    # A checkpoint every step (8) and at every epoch's end (4); only the newest two are kept.
    kept = checkpoints(out)
    assert [p.name for p in kept] == ["checkpoint_10", "checkpoint_11"]
    state = torch.load(kept[-1] / "custom_checkpoint_0.pkl", weights_only=False)
    assert (state["epoch"], state["global_step"], state["best_epoch"]) == (4, 8, 2)
    # One name per quantity: per-step train values, per-epoch validation, the best model's final numbers.
    per_step = set().union(*step_logs)
    per_epoch = set().union(*(v for v in logged if "val/loss" in v))
    final = set().union(*(v for v in logged if any(k.startswith("best_model/") for k in v)))
    assert per_step == {
        "train/loss", "train/accuracy", "train/lr", "train/images_per_s", "train/ema_decay", "epoch"
    }  # fmt: skip
    assert per_epoch == {"val/loss", "val/accuracy", "val/macro_f1"}
    assert {"best_model/train/loss", "best_model/val/accuracy", "best_model/test/macro_f1"} <= final
    assert not per_step & final and not per_epoch & final
    # The EMA copies the weights for 3 steps, then decays at exactly 0.9 (timm's warm-up gave ~0.6).
    assert [v["train/ema_decay"] for v in step_logs] == [0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.9, 0.9]
    assert [r["ema_decay"] for r in result.results["history"]] == [0.0, 0.9, 0.9, 0.9]  # steps 2, 4, 6, 8
    assert layouts == {(True, True)}  # --channels-last false: no channels-last batch or weight anywhere
    # Off a terminal: progress is log lines, no carriage-return bar.
    assert any("step 8/12 (67%)  loss" in r.getMessage() for r in caplog.records)


def test_transforms_give_the_memory_layout_asked_for() -> None:
    from trashnet_hf.core.preprocessing import Preprocessing
    from trashnet_hf.data.transforms import EvalTransform, TrainTransform

    pre, batch = Preprocessing(image_size=16), torch.randint(0, 256, (2, 18, 18, 3), dtype=torch.uint8)
    for transform in (TrainTransform, EvalTransform):
        nchw = transform(pre, channels_last=False)(batch)
        assert nchw.is_contiguous() and not nchw.is_contiguous(memory_format=torch.channels_last)
        default = transform(pre)(batch)
        assert default.is_contiguous(memory_format=torch.channels_last) and not default.is_contiguous()


def test_train_loss_is_plain_cross_entropy() -> None:
    """The curves compare splits on one scale: label smoothing only shapes the optimisation target."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    stats = training.LoopStats(accelerator, total_steps=1, state=training.TrainerState())
    logits, labels = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), torch.tensor([0, 2])
    stats.add(logits, labels)
    window = stats.read_window(training.TrainerState())
    assert window["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert window["accuracy"] == 0.5


def test_latest_without_a_checkpoint_and_a_tiny_train_split_are_refused(tmp_path: Path) -> None:
    data = make_learnable_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="--resume-from-checkpoint latest: no checkpoint"):
        train(_cfg(data, out, str(tmp_path / "cache"), resume_from_checkpoint="latest"))
    assert not (out / "data_report.json").exists()  # refused before any data work
    with pytest.raises(DataError, match=r"fewer than one batch.*--batch-size"):
        train(_cfg(data, out, str(tmp_path / "cache"), batch_size=64))


@pytest.mark.slow  # two tiny trainings: ~20 s
def test_training_draws_the_same_however_the_data_was_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making a split builds the reference embedder, which draws from the global RNGs; reusing one does not.
    The same seed and split must still train the same: here data preparation draws as the embedder does."""
    data = make_learnable_folder(tmp_path / "data")
    kw = {"model_name": "test_resnet", "epochs": 2, "ood_flag_rate": 0}
    plain = train(_cfg(data, tmp_path / "a", str(tmp_path / "cache"), **kw))
    load_data = training.load_data

    def drawing(*args, **kwargs):
        torch.rand(1000), torch.nn.Linear(64, 64)  # a random init, as timm.create_model's before loading
        return load_data(*args, **kwargs)

    monkeypatch.setattr(training, "load_data", drawing)
    drawn = train(_cfg(data, tmp_path / "b", str(tmp_path / "cache"), **kw))
    a = json.loads((tmp_path / "a" / "results.json").read_text())["history"]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["history"]
    assert plain.status == drawn.status == "completed"
    assert [h["train_loss"] for h in a] == [h["train_loss"] for h in b] and a == b
