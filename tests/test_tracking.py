"""W&B tracking through Accelerate, offline: what lands on disk, resuming, no-op and failure paths."""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
import wandb
from accelerate import Accelerator
from accelerate.tracking import WandBTracker
from PIL import Image

from trashnet_hf.training.tracking import (
    configure_wandb,
    finish,
    init_trackers,
    log_image,
    log_metrics,
    log_model_artifact,
    log_predictions,
)

CLASSES = ["cat", "dog"]
LABELS = [0, 1, 1]
PROBS = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
WANDB_VARS = (
    "WANDB_API_KEY",
    "WANDB_IDENTITY_TOKEN_FILE",
    "WANDB_MODE",
    "WANDB_DIR",
    "WANDB_DATA_DIR",
    "WANDB_ERROR_REPORTING",
    "WANDB_BASE_URL",
)


@pytest.fixture
def wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No W&B variables, no login; anything configure_wandb sets is undone after the test."""
    for name in WANDB_VARS:
        # setenv first so that monkeypatch restores the original state even if the test sets it.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    yield tmp_path
    if wandb.run is not None:  # a failed test must not leave its run open for the next one
        wandb.run.finish()


def _images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)


def _png(path: Path) -> Path:
    Image.fromarray(np.full((16, 24, 3), 200, dtype=np.uint8)).save(path)
    return path


def _our_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "trashnet_hf.training.tracking" and r.levelno >= logging.WARNING
    ]


def _segments(wandb_root: Path, run_id: str) -> list[Path]:
    return sorted(
        d for d in (wandb_root / "wandb").glob("offline-run-*") if (d / f"run-{run_id}.wandb").exists()
    )


def _records(path: Path, *expected: bytes) -> bytes:
    """The run record file once it holds ``expected`` (wandb 0.31 finish() returns before flushing it)."""
    for _ in range(100):
        if all(e in (data := path.read_bytes()) for e in expected):
            break
        time.sleep(0.05)
    return data


# --- configure_wandb -----------------------------------------------------------------------------------


def test_configure_without_credentials_goes_offline(
    wandb_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="trashnet_hf.training.tracking"):
        assert configure_wandb(wandb_env / "first") == "offline"
    assert os.environ["WANDB_MODE"] == "offline"
    assert os.environ["WANDB_ERROR_REPORTING"] == "false"
    assert any("offline" in r.getMessage() and "no API key" in r.getMessage() for r in caplog.records)
    # A second training in the same process (the first never reached finish) gets its own folders.
    for name in ("first", "second"):
        out = (wandb_env / name).resolve()
        assert configure_wandb(out) == "offline"
        assert os.environ["WANDB_DIR"] == str(out)
        assert os.environ["WANDB_DATA_DIR"] == str(out / "wandb" / "data")
    finish(Accelerator())  # the folders were for this run only: not inherited by later processes
    assert "WANDB_DIR" not in os.environ and "WANDB_DATA_DIR" not in os.environ


def test_configure_leaves_preset_mode_and_dir_alone(wandb_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(wandb_env / "elsewhere"))
    assert configure_wandb(wandb_env / "out") == "disabled"
    assert os.environ["WANDB_MODE"] == "disabled"
    assert os.environ["WANDB_DATA_DIR"] == str(wandb_env / "elsewhere" / "wandb" / "data")
    assert "WANDB_ERROR_REPORTING" not in os.environ
    finish(Accelerator())
    assert os.environ["WANDB_DIR"] == str(wandb_env / "elsewhere")  # the user's, so kept
    assert not (wandb_env / "out").exists()


@pytest.mark.parametrize("how", ["env", "netrc"])
def test_configure_with_credentials_stays_online(
    wandb_env: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "env":
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    else:  # what `wandb login` leaves behind
        netrc = wandb_env / "netrc"
        netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'x' * 40}\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
    assert configure_wandb(wandb_env / "out") == "online"
    assert "WANDB_MODE" not in os.environ


# --- a real offline run --------------------------------------------------------------------------------


@pytest.mark.slow  # W&B start-up: seconds
def test_offline_run_records_everything(wandb_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = wandb_env / "out"
    assert configure_wandb(out) == "offline"
    accelerator = Accelerator(log_with="wandb", project_dir=str(out))
    caplog.set_level(logging.INFO, logger="trashnet_hf.training.tracking")

    run_id = init_trackers(accelerator, "trashnet-test", {"lr": 0.1}, run_name="e2e", run_id=None)
    assert run_id is not None
    log_metrics(accelerator, {"train/loss": 0.5}, step=1)
    log_predictions(accelerator, _images(), LABELS, PROBS, CLASSES, step=1)
    log_image(accelerator, "test/confusion_matrix", _png(wandb_env / "cm.png"), step=1)
    model_dir = wandb_env / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"num_labels": 2}')
    log_model_artifact(accelerator, model_dir, "trashnet model", {"accuracy": 0.9})
    command = finish(accelerator)

    assert _our_warnings(caplog) == []
    [run_dir] = _segments(out, run_id)  # the id W&B chose names the run folder under WANDB_DIR
    assert command == f"wandb sync {run_dir}"
    assert any(command in r.getMessage() for r in caplog.records)  # logged for the user, too
    assert accelerator.trackers == []
    assert "WANDB_DIR" not in os.environ and "WANDB_DATA_DIR" not in os.environ
    records = _records(run_dir / f"run-{run_id}.wandb", b"train/loss", b"trashnet-model")
    assert b"train/loss" in records
    assert b"trashnet-model" in records and b"trashnet model" not in records  # a name wandb accepts

    # The run folder keeps a preview of the table (media show as their type name) ...
    [table_file] = run_dir.glob("files/media/table/val/predictions_1_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["image", "truth", "prediction", "score_cat", "score_dog"]
    assert [row[1:3] for row in table["data"]] == [["cat", "cat"], ["dog", "dog"], ["dog", "cat"]]
    assert [row[3:] for row in table["data"]] == PROBS.tolist()
    assert list(run_dir.glob("files/media/images/test/confusion_matrix_1_*.png"))

    # ... while the full table, its images and the model files are staged for `wandb sync` in
    # WANDB_DATA_DIR, which configure_wandb put under the output folder.
    staged = list((out / "wandb" / "data" / "artifacts" / "staging").iterdir())
    contents = [f.read_bytes() for f in staged]
    assert b'{"num_labels": 2}' in contents
    # wandb 0.31 stages the same table JSON twice; the copies are identical.
    full_tables = {c for c in contents if c.startswith(b'{"_type": "table"')}
    assert len(full_tables) == 1
    full_table = json.loads(full_tables.pop())
    assert [row[0]["_type"] for row in full_table["data"]] == ["image-file"] * 3
    assert [row[1:] for row in full_table["data"]] == [
        ["cat", "cat", 0.9, 0.1],
        ["dog", "dog", 0.3, 0.7],
        ["dog", "cat", 0.6, 0.4],
    ]
    assert len({c for c in contents if c.startswith(b"\x89PNG")}) == 3  # the three images


@pytest.mark.slow  # W&B start-up: seconds
def test_resumed_run_keeps_its_id(wandb_env: Path) -> None:
    out = wandb_env / "out"
    configure_wandb(out)
    accelerator = Accelerator(log_with="wandb")
    run_id = init_trackers(accelerator, "trashnet-test", {"lr": 0.1}, run_name="first", run_id=None)
    log_metrics(accelerator, {"train/loss": 0.5}, step=1)
    first_command = finish(accelerator)

    # Same accelerator after finish, as after a restart from a checkpoint that stored the id; every
    # training start configures wandb first (finish undid the run folders it set).
    configure_wandb(out)
    assert init_trackers(accelerator, "trashnet-test", {"lr": 0.1}, run_name="first", run_id=run_id) == run_id
    assert accelerator.get_tracker("wandb", unwrap=True).id == run_id
    log_metrics(accelerator, {"train/loss": 0.4}, step=2)
    second_command = finish(accelerator)

    # Each offline session writes its own folder; the sync command names every unsynced one.
    segments = _segments(out, run_id)
    assert len(segments) == 2
    assert first_command == f"wandb sync {segments[0]}"
    assert second_command == shlex.join(["wandb", "sync", *map(str, segments)])


def test_disabled_mode_records_nothing(wandb_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = wandb_env / "out"
    configure_wandb(out)
    accelerator = Accelerator(log_with="wandb")
    assert init_trackers(accelerator, "trashnet-test", {}, run_name=None, run_id=None) is None
    log_predictions(accelerator, _images(), LABELS, PROBS, CLASSES, step=1)
    assert finish(accelerator) is None
    assert not (out / "wandb").exists()


# --- no tracker, failing tracker -----------------------------------------------------------------------


def test_without_wandb_every_call_is_a_noop(wandb_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    accelerator = Accelerator()  # also what every process but the main one has: no trackers
    caplog.set_level(logging.DEBUG, logger="trashnet_hf.training.tracking")
    missing = wandb_env / "missing"
    # Inputs that would fail (and warn) if anything were really done with them.
    assert init_trackers(accelerator, "trashnet-test", {"lr": 0.1}, run_name="n", run_id="abc") is None
    assert log_metrics(accelerator, {"train/loss": 0.5}, step=1) is None
    assert log_predictions(accelerator, np.zeros((1, 2)), [5], np.zeros(3), CLASSES, step=1) is None
    assert log_image(accelerator, "test/cm", missing / "cm.png", step=1) is None
    assert log_model_artifact(accelerator, missing, "model", {}) is None
    assert finish(accelerator) is None
    assert accelerator.trackers == []
    assert caplog.records == []
    assert not list(wandb_env.rglob("*wandb*"))


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ((wandb, "init"), wandb.errors.UsageError("No API key configured")),
        # wandb.init succeeded, so a run is open and must be closed.
        ((WandBTracker, "store_init_configuration"), TypeError("config value not serialisable")),
    ],
    ids=["init", "config"],
)
@pytest.mark.slow  # W&B start-up: seconds
def test_failing_start_drops_the_trackers(
    wandb_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    target: tuple[object, str],
    error: Exception,
) -> None:
    configure_wandb(wandb_env / "out")
    accelerator = Accelerator(log_with="wandb")

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(*target, refuse)
    with caplog.at_level(logging.WARNING, logger="trashnet_hf.training.tracking"):
        assert init_trackers(accelerator, "trashnet-test", {"lr": 0.1}, run_name=None, run_id=None) is None
        assert accelerator.trackers == []
        assert wandb.run is None  # no run left open
        accelerator.log({"train/loss": 0.5}, step=1)  # the loop's own calls now reach no tracker
        log_predictions(accelerator, _images(), LABELS, PROBS, CLASSES, step=1)
        assert finish(accelerator) is None
    assert _our_warnings(caplog) == [
        f"W&B tracking: starting the trackers failed ({type(error).__name__}: {error}); "
        "training continues without it.",
        "W&B: trackers dropped; training continues without experiment tracking.",
    ]


@pytest.mark.slow  # W&B start-up: seconds
def test_failing_tracker_warns_and_carries_on(
    wandb_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    configure_wandb(wandb_env / "out")
    accelerator = Accelerator(log_with="wandb")
    assert init_trackers(accelerator, "trashnet-test", {}, run_name=None, run_id=None) is not None

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    run = accelerator.get_tracker("wandb", unwrap=True)
    monkeypatch.setattr(run, "log", broken)
    monkeypatch.setattr(run, "log_artifact", broken)
    model_dir = wandb_env / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"\0" * 16)
    caplog.set_level(logging.WARNING, logger="trashnet_hf.training.tracking")
    assert log_metrics(accelerator, {"train/loss": 0.5}, step=1) is None
    assert log_predictions(accelerator, _images(), LABELS, PROBS, CLASSES, step=1) is None
    assert log_image(accelerator, "test/cm", _png(wandb_env / "cm.png"), step=1) is None
    assert log_model_artifact(accelerator, model_dir, "model", {}) is None
    assert _our_warnings(caplog) == [
        f"W&B tracking: {what} failed (RuntimeError: disk full); training continues without it."
        for what in (
            "logging metrics",
            "logging the prediction table",
            "logging an image",
            "logging the model artifact",
        )
    ]
    # The run itself is intact and still ends cleanly.
    assert finish(accelerator).startswith("wandb sync ")
