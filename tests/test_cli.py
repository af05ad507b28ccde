"""The command lines (train.py, ``python -m trashnet_hf.data``, ``python -m trashnet_hf.evaluation``):
--help documents every flag, and a bad flag stops before any work with a message naming it."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from tests.conftest import make_learnable_folder
from trashnet_hf.config import ConfigError, DataConfig, TrainConfig
from trashnet_hf.data.__main__ import main as data_main
from trashnet_hf.evaluation import EvalArgs
from trashnet_hf.evaluation import main as eval_main
from trashnet_hf.model import DEFAULT_MODEL_NAME

ROOT = Path(__file__).resolve().parents[1]


def train_main() -> Callable[[list[str]], int]:
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


CLIS: dict[str, tuple[Callable[[], Callable], tuple[type, ...]]] = {
    "train": (train_main, (TrainConfig,)),
    "data": (lambda: data_main, (DataConfig,)),
    "evaluate": (lambda: eval_main, (EvalArgs, DataConfig)),
}


@pytest.mark.parametrize("cli", CLIS)
def test_help_documents_every_flag(cli: str, capsys: pytest.CaptureFixture[str]) -> None:
    main, configs = CLIS[cli]
    with pytest.raises(SystemExit) as info:
        main()(["--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for config in configs:
        for f in fields(config):
            assert "--" + f.name.replace("_", "-") in help_text, f.name
            assert f.metadata.get("help"), f.name


SHARES_OFF = ["--train-share", "0.5", "--val-share", "0.2", "--test-share", "0.2"]


@pytest.mark.parametrize(
    ("cli", "argv", "message"),
    [
        ("train", ["--data-dir", "/no/such/data"], "--data-dir"),
        ("train", ["--image-size", "0"], "--image-size"),
        ("train", SHARES_OFF, "must sum to 1"),
        ("train", ["--epochs", "0"], "--epochs"),
        ("train", ["--resume-from-checkpoint", "/no/such/ckpt"], "--resume-from-checkpoint"),
        ("data", ["--data-dir", "/no/such/folder"], "--data-dir"),
        ("data", ["--crop-pct", "0"], "--crop-pct"),
        ("data", SHARES_OFF, "must sum to 1"),
        ("data", ["--hash-threshold", "500"], "--hash-threshold"),
        ("evaluate", ["--model-dir", "m", "--split", "dev"], "--split"),
        ("evaluate", ["--model-dir", "m", "--image-size", "0"], "--image-size"),
    ],
)
def test_bad_flags_fail_before_any_work(
    cli: str, argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as info:
        CLIS[cli][0]()([*argv, "--output-dir", str(out)])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_wandb_asked_for_but_missing_stops_naming_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    # Accelerate would drop the tracker and log that only at debug level: training would run untracked.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match="--report-to"):
        TrainConfig(report_to="wandb")
    TrainConfig(report_to="none")  # untracked runs need no wandb


@pytest.mark.parametrize("hub_state", ["offline", "unreachable"])
def test_pretrained_without_the_hub_fails_fast_naming_the_flag(
    hub_state: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue(hub_state)
    data = make_learnable_folder(tmp_path / "data", per_class=4)
    argv = ["--data-dir", str(data), "--output-dir", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]
    start = time.monotonic()
    with caplog.at_level(logging.ERROR):
        assert train_main()(argv) == 1
    assert time.monotonic() - start < 10  # huggingface_hub alone retries for ~25 s
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None  # one line, no traceback
    assert DEFAULT_MODEL_NAME in errors[0].getMessage()
    assert "--pretrained false" in errors[0].getMessage()
    assert not (tmp_path / "o" / "data_report.json").exists()  # before any data work
    # The failed run's W&B folder settings do not outlive it (a later run would log into this folder).
    assert str(tmp_path / "o") not in os.environ.get("WANDB_DIR", "")
