"""The command lines (train.py, ``trashnet-hf data``, ``trashnet-hf evaluate``):
--help documents every flag, and a bad flag stops before any work with a message naming it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from tests.conftest import HASH_ONLY, make_learnable_folder
from trashnet_hf.core.backbones import BackboneArgs
from trashnet_hf.core.backbones import main as backbones_main
from trashnet_hf.core.config import ConfigError, DataConfig, TrainConfig
from trashnet_hf.core.model import DEFAULT_MODEL_NAME
from trashnet_hf.data.__main__ import main as data_main
from trashnet_hf.training.evaluation import EvalArgs
from trashnet_hf.training.evaluation import main as eval_main

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
    "backbones": (lambda: backbones_main, (BackboneArgs,)),
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
NO_VAL = ["--train-share", "0.85", "--val-share", "0", "--test-share", "0.15"]
NO_TEST = ["--train-share", "0.85", "--val-share", "0.15", "--test-share", "0"]


def _file(tmp: Path) -> str:
    path = tmp / "a_file.txt"
    path.write_text("not a folder")
    return str(path)


def _damaged_zip(tmp: Path) -> str:
    """A Hub-layout zip whose deflate stream is damaged mid-way (zlib fails, not the zip directory)."""
    folder = tmp / "zips"
    folder.mkdir()
    path = folder / "dataset-resized.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("dataset-resized/alpha/a.jpg", bytes(range(256)) * 400)
    raw = bytearray(path.read_bytes())
    raw[60:90] = b"\xff" * 30  # inside the compressed data, after the local header
    path.write_bytes(bytes(raw))
    return str(folder)


def _pre_split(tmp: Path) -> str:
    make_learnable_folder(tmp / "split" / "train", per_class=2)
    make_learnable_folder(tmp / "split" / "test", per_class=2)
    return str(tmp / "split")


def _one_class(tmp: Path) -> str:
    make_learnable_folder(tmp / "one", per_class=3)
    for name in ("beta", "gamma"):
        shutil.rmtree(tmp / "one" / name)
    return str(tmp / "one")


# (cli, argv from a temporary folder, exit code, text the one-line message must hold)
BAD_INPUT = [
    ("train", lambda t: ["--data-dir", "/no/such/data"], 2, "--data-dir"),
    ("train", lambda t: ["--data-dir", _file(t)], 2, "--data-dir: "),
    ("train", lambda t: ["--image-size", "0"], 2, "--image-size"),
    ("train", lambda t: SHARES_OFF, 2, "must sum to 1"),
    ("train", lambda t: NO_VAL, 2, "--val-share must be above 0"),
    ("train", lambda t: NO_TEST, 2, "--test-share must be above 0"),
    ("train", lambda t: ["--epochs", "0"], 2, "--epochs"),
    ("train", lambda t: ["--epochs", "two"], 2, "--epochs"),
    ("train", lambda t: ["--seed", "-5"], 2, "--seed"),
    ("train", lambda t: ["--lr", "0.01"], 2, "unknown argument --lr"),
    ("train", lambda t: ["--learning-rat", "0.01"], 2, "unknown argument --learning-rat"),  # no prefix match
    ("train", lambda t: ["--resume-from-checkpoint", "/no/such/ckpt"], 2, "--resume-from-checkpoint"),
    ("train", lambda t: ["--resume-from-checkpoint", "latest"], 2, "--resume-from-checkpoint latest: no"),
    ("train", lambda t: ["--overwrite-output-dir", "--resume-from-checkpoint", "latest"], 2, "contradict"),
    ("train", lambda t: ["--output-dir", _file(t)], 2, "--output-dir: "),
    ("train", lambda t: ["--output-dir", "/sys"], 2, "--output-dir /sys: cannot write"),  # read-only
    ("train", lambda t: ["--output-dir", "/sys/trashnet_out"], 2, "cannot write"),  # cannot be created
    ("data", lambda t: ["--data-dir", "/no/such/folder"], 2, "--data-dir"),
    ("data", lambda t: ["--crop-pct", "0"], 2, "--crop-pct"),
    ("data", lambda t: SHARES_OFF, 2, "must sum to 1"),
    ("data", lambda t: ["--hash-threshold", "500"], 2, "--hash-threshold"),
    ("data", lambda t: ["--seed", "-5"], 2, "--seed"),
    ("data", lambda t: ["--lr", "0.01"], 2, "unknown argument --lr"),
    ("data", lambda t: ["--data-dir", _damaged_zip(t)], 1, "dataset-resized.zip: not a readable zip"),
    ("data", lambda t: ["--data-dir", _pre_split(t)], 1, "is split in advance"),
    ("train", lambda t: ["--data-dir", _pre_split(t)], 1, "is split in advance"),
    ("train", lambda t: ["--data-dir", _one_class(t)], 1, "holds one class folder (alpha/)"),
    ("evaluate", lambda t: ["--model-dir", "m", "--split", "dev"], 2, "--split"),
    ("evaluate", lambda t: ["--model-dir", "m", "--image-size", "0"], 2, "--image-size"),
    ("evaluate", lambda t: ["--model-dir", "m", "--lr", "0.01"], 2, "unknown argument --lr"),
    ("evaluate", lambda t: ["--model-dir", "m", "--eval-batch-size", "0"], 2, "--eval-batch-size"),
    (
        "evaluate",
        lambda t: ["--model-dir", "m", "--metrics-file", "/no/such/dir/m.json"],
        2,
        "--metrics-file",
    ),
    ("evaluate", lambda t: ["--model-dir", "/no/such/model"], 2, "--model-dir"),
]


@pytest.mark.parametrize(("cli", "argv", "code", "message"), BAD_INPUT)
def test_bad_input_stops_before_any_work_with_one_line(
    cli: str, argv, code: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_learnable_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "out"
    base = [
        *HASH_ONLY,
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    base += ["--pretrained", "false", "--report-to", "none"] if cli == "train" else []
    assert CLIS[cli][0]()([*base, *argv(tmp_path)]) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    # One line, no usage block, no traceback (datasets' progress bars may share stderr).
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err
    assert message in lines[0]
    assert not (out / "data_report.json").exists()  # before any data work
    assert not list((tmp_path / "cache").glob("**/*.arrow"))


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
    hub_state: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue(hub_state)
    data = make_learnable_folder(tmp_path / "data", per_class=4)
    argv = [
        *HASH_ONLY,
        "--data-dir",
        str(data),
        "--output-dir",
        str(tmp_path / "o"),
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    start = time.monotonic()
    assert train_main()(argv) == 1
    assert time.monotonic() - start < 10  # huggingface_hub alone retries for ~25 s
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    assert DEFAULT_MODEL_NAME in err[0] and "--pretrained false" in err[0]
    assert not (tmp_path / "o" / "data_report.json").exists()  # before any data work
    # The failed run's W&B folder settings do not outlive it (a later run would log into this folder).
    assert str(tmp_path / "o") not in os.environ.get("WANDB_DIR", "")
