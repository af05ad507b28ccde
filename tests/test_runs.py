"""Nothing lost, nothing mixed up: reused output folders, resumes of another run, damaged checkpoints,
settings recorded as they ran. Tiny runs of a tiny timm model on synthetic images, in process."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

from tests.conftest import HASH_ONLY, make_learnable_folder
from tests.test_cli import train_main
from trashnet_hf.training.checkpointing import checkpoints

# Every test here starts from real training runs (module fixtures and their copies): seconds each.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_learnable_folder(tmp_path_factory.mktemp("runs") / "data", per_class=12)


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        *HASH_ONLY, "--data-dir", str(data), "--output-dir", str(out),
        "--cache-dir", str(data.parent / "cache"),
        "--pretrained", "false", "--model-name", "test_resnet", "--image-size", "32", "--epochs", "2",
        "--batch-size", "8", "--report-to", "none", "--patience", "0", *extra,
    ]  # fmt: skip


def _train(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = train_main()(argv)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch run, copied afresh by each test that changes it."""
    out = tmp_path_factory.mktemp("finished") / "out"
    assert train_main()(_argv(data, out)) == 0
    return out


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def _one_error_line(err: str) -> bool:
    # stderr also carries datasets' progress bars: the error itself is one line, with no traceback.
    return "Traceback" not in err and sum("error:" in line for line in err.splitlines()) == 1


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_folder_with_a_run_is_refused_and_left_as_it_was(
    data: Path, run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(run_copy)
    code, err = _train(_argv(data, run_copy, "--epochs", "1"), capsys)
    assert code == 2 and "holds a previous run" in err and "--overwrite-output-dir" in err
    assert _snapshot(run_copy) == before


def test_overwrite_replaces_the_previous_run_whole(
    data: Path, run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_learnable_folder(tmp_path / "other", per_class=10)
    shutil.rmtree(other / "gamma")  # other data: two classes
    code, _ = _train(_argv(other, run_copy, "--epochs", "1", "--overwrite-output-dir"), capsys)
    assert code == 0
    results = json.loads((run_copy / "results.json").read_text())
    assert len(results["history"]) == 1 and results["data_report"]["class_names"] == ["alpha", "beta"]
    assert [p.name for p in checkpoints(run_copy)] == ["checkpoint_0"]  # none of the old run's left


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--batch-size", "4"], "--batch-size 8 then, 4 now"),
        (["--epochs", "3"], "--epochs 2 then, 3 now"),
        (["--gradient-accumulation-steps", "2"], "--gradient-accumulation-steps"),
    ],
)
def test_resume_with_other_settings_is_refused_before_any_work(
    data: Path, run_copy: Path, extra: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(run_copy)
    code, err = _train(_argv(data, run_copy, "--resume-from-checkpoint", "latest", *extra), capsys)
    assert code == 1 and "is from another run" in err and named in err
    assert _snapshot(run_copy) == before


def test_resume_on_other_data_is_refused_naming_the_classes(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_learnable_folder(tmp_path / "other", per_class=12)
    shutil.rmtree(other / "gamma")  # another class count: a size mismatch in the head, unchecked
    before = _snapshot(run_copy)
    code, err = _train(_argv(other, run_copy, "--resume-from-checkpoint", "latest"), capsys)
    assert code == 1 and "classes ['alpha', 'beta', 'gamma'] then, ['alpha', 'beta'] now" in err
    assert _one_error_line(err)  # not a size-mismatch traceback
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize("damaged", ["model.safetensors", "custom_checkpoint_0.pkl"])
def test_a_truncated_checkpoint_names_itself_and_the_previous_one(
    data: Path, run_copy: Path, damaged: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first, last = checkpoints(run_copy)
    target = last / damaged
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    code, err = _train(_argv(data, run_copy, "--resume-from-checkpoint", "latest"), capsys)
    assert code == 1 and _one_error_line(err)
    assert f"checkpoint {last}" in err and f"--resume-from-checkpoint {first}" in err


def test_a_resume_without_rng_state_warns_that_it_is_not_exact(
    data: Path, run_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = checkpoints(run_copy)[0]  # the end of epoch 1: a resume trains epoch 2
    (first / "random_states_0.pkl").unlink()
    with caplog.at_level(logging.WARNING):
        assert train_main()(_argv(data, run_copy, "--resume-from-checkpoint", str(first))) == 0
    assert any("the resume will not be exact" in r.getMessage() for r in caplog.records)


def test_fp16_on_the_cpu_records_what_ran(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    AcceleratorState._reset_state(reset_partial_state=True)  # precision is fixed once per process
    try:
        with caplog.at_level(logging.WARNING):
            assert train_main()(_argv(data, out, "--epochs", "1", "--mixed-precision", "fp16")) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert json.loads((out / "results.json").read_text())["mixed_precision"] == "no"
    assert any("--mixed-precision fp16 is not available on cpu" in r.getMessage() for r in caplog.records)


def test_no_prediction_table_means_no_failing_table(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    argv = _argv(data, out, "--epochs", "1", "--prediction-table-size", "0", "--report-to", "wandb")
    with caplog.at_level(logging.WARNING):
        assert train_main()(argv) == 0
    assert not [r for r in caplog.records if "W&B tracking" in r.getMessage()]
    assert list((out / "wandb").glob("offline-run-*"))  # the run itself was tracked
