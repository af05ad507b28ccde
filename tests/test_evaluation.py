"""``trashnet-hf evaluate``: classes matched by name, and bad inputs stopped with one line.

One tiny model is trained once for the module; every data variant is built from the same images, so the
split of a class's images is the one training made.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from tests.conftest import CLASSES, HASH_ONLY, make_learnable_folder
from trashnet_hf.core.config import ConfigError, DataConfig, TrainConfig
from trashnet_hf.core.errors import UserError
from trashnet_hf.core.model import ModelLoadError, load_model, preprocessing_of
from trashnet_hf.data import prepare_data
from trashnet_hf.data.loader import decode_pixels
from trashnet_hf.data.transforms import EvalTransform
from trashnet_hf.training.evaluation import EvalArgs, label_mapping
from trashnet_hf.training.evaluation import main as eval_main
from trashnet_hf.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
PROG = "trashnet-hf evaluate"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model trained on three classes, its output folder, its data and its prepared-data cache."""
    tmp = tmp_path_factory.mktemp("evaluation")
    data = make_learnable_folder(tmp / "data")
    out = tmp / "out"
    cfg = TrainConfig(
        data_dir=str(data),
        output_dir=str(out),
        cache_dir=str(tmp / "cache"),
        model_name="test_resnet",
        pretrained=False,
        image_size=32,
        epochs=2,
        batch_size=8,
        eval_batch_size=16,
        warmup_ratio=0.0,
        patience=0,
        report_to="none",
        near_duplicate_threshold=0,  # HASH_ONLY
    )
    assert train(cfg).status == "completed"
    return {"root": tmp, "data": data, "out": out, "model": out / "model", "cache": tmp / "cache"}


def _copy_data(src: Path, dst: Path, rename: dict[str, str | None]) -> Path:
    """The class folders of ``src`` under ``dst``, renamed (None: left out)."""
    for cls in CLASSES:
        name = rename.get(cls, cls)
        if name is not None:
            shutil.copytree(src / cls, dst / name)
    return dst


def _evaluate(trained: dict[str, Path], tmp_path: Path, *extra: str, data: Path | None = None) -> int:
    return eval_main([
        "--model-dir", str(trained["model"]), *HASH_ONLY, "--data-dir", str(data or trained["data"]),
        "--cache-dir", str(trained["cache"]), *extra,
    ])  # fmt: skip


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"{PROG}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _test_metrics(trained: dict[str, Path]) -> dict[str, Any]:
    return json.loads((trained["out"] / "results.json").read_text())["metrics"]["test"]


# --- Classes are matched by name ---------------------------------------------------------------------


def test_the_same_classes_give_training_test_metrics(trained: dict[str, Path], tmp_path: Path) -> None:
    metrics_file = tmp_path / "m.json"
    assert _evaluate(trained, tmp_path, "--metrics-file", str(metrics_file)) == 0
    got, expected = json.loads(metrics_file.read_text()), _test_metrics(trained)
    assert got.pop("loss") == pytest.approx(expected.pop("loss"), rel=1e-5)
    assert got == expected
    assert sum(map(sum, got["confusion_matrix"])) > 0


def _manifest_rows(trained: dict[str, Path]) -> list[dict[str, str]]:
    with (trained["out"] / "split_manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "group", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_the_split_is_the_one_the_runs_manifest_lists(trained: dict[str, Path], tmp_path: Path) -> None:
    """A near-duplicate split cannot be redone from the fine-tuned model: the manifest decides, by default
    the run's own (the same data and split flags), else the one passed."""
    rows = _manifest_rows(trained)
    test_rows = [r for r in rows if r["split"] == "test"]
    kept = test_rows[: len(test_rows) // 2]  # a manifest whose test split is half the run's
    manifest = _write_manifest(tmp_path / "half.csv", [r for r in rows if r not in test_rows] + kept)
    for args, expected in (([], len(test_rows)), (["--split-manifest", str(manifest)], len(kept))):
        metrics_file = tmp_path / f"m{len(args)}.json"
        assert _evaluate(trained, tmp_path, "--metrics-file", str(metrics_file), *args) == 0
        support = sum(c["support"] for c in json.loads(metrics_file.read_text())["per_class"].values())
        assert support == expected


def test_a_manifest_naming_images_the_data_lacks_is_refused(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _manifest_rows(trained)
    rows.append({"path": str(tmp_path / "elsewhere.jpg"), "label": "alpha", "group": "999", "split": "test"})
    manifest = _write_manifest(tmp_path / "m.csv", rows)
    assert _evaluate(trained, tmp_path, "--split-manifest", str(manifest)) == 1
    error = _one_error_line(capsys.readouterr().err)
    assert "1 test image(s) the data does not hold" in error and "elsewhere.jpg" in error


# --- A manifest is a property of a run -------------------------------------------------------------------


def _foreign_manifest(trained: dict[str, Path], path: Path, trained_on: int) -> tuple[Path, int]:
    """Another run's manifest: its test split holds ``trained_on`` of this model's train images beside
    this run's test images. Returns it and the size of its test split."""
    rows = [dict(r) for r in _manifest_rows(trained)]
    for row in [r for r in rows if r["split"] == "train"][:trained_on]:
        row["split"] = "test"
    return _write_manifest(path, rows), sum(r["split"] == "test" for r in rows)


def test_another_runs_manifest_is_refused_naming_the_count_before_any_work(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, n_test = _foreign_manifest(trained, tmp_path / "other_run.csv", trained_on=5)
    metrics_file, cache = tmp_path / "m.json", tmp_path / "cache"
    argv = ["--model-dir", str(trained["model"]), *HASH_ONLY, "--data-dir", str(trained["data"]),
            "--cache-dir", str(cache), "--split-manifest", str(manifest),
            "--metrics-file", str(metrics_file)]  # fmt: skip
    assert eval_main(argv) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"5 of its {n_test} test images" in line and "5 in its train split" in line
    assert str(trained["out"] / "split_manifest.csv") in line  # the way out: the run's own manifest
    assert not metrics_file.exists() and not cache.exists()  # refused before the data was prepared


def test_a_split_made_again_with_other_flags_that_holds_trained_images_is_refused(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another --seed deals the groups again: some of the model's train images land in "test".
    metrics_file = tmp_path / "m.json"
    assert _evaluate(trained, tmp_path, "--seed", "7", "--metrics-file", str(metrics_file)) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "the test split made from the data flags" in line and "in its train split" in line
    assert not metrics_file.exists()


def test_a_model_without_its_run_says_it_carries_no_record_of_its_split(
    trained: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A model folder on its own (copied, or downloaded from the Hub): nothing to check against, said so.
    model_dir = shutil.copytree(trained["model"], tmp_path / "downloaded" / "model")
    manifest, _ = _foreign_manifest(trained, tmp_path / "other_run.csv", trained_on=5)
    argv = ["--model-dir", str(model_dir), *HASH_ONLY, "--data-dir", str(trained["data"]),
            "--cache-dir", str(trained["cache"]), "--split-manifest", str(manifest)]  # fmt: skip
    with caplog.at_level("WARNING", logger="trashnet_hf.training.evaluation"):
        assert eval_main(argv) == 0
    assert any("carries no record of the split it was trained on" in r.message for r in caplog.records)


@pytest.mark.parametrize("fingerprint", [True, False])
def test_a_run_manifest_rewritten_after_training_is_refused(
    fingerprint: bool, trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run's split_manifest.csv is checked against the split fingerprint the run recorded; a run
    from before the fingerprint (``fingerprint=False``) is checked by its per-class split counts."""
    run = shutil.copytree(trained["out"], tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    if not fingerprint:
        results = json.loads((run / "results.json").read_text())
        del results["data_report"]["split_fingerprint"]
        (run / "results.json").write_text(json.dumps(results))
    rows = _manifest_rows(trained)
    train_row = next(r for r in rows if r["split"] == "train")
    test_row = next(r for r in rows if r["split"] == "test" and r["label"] == train_row["label"])
    train_row["split"] = "test"  # a split that is not the one the model was trained on
    if fingerprint:  # a swap within a class: the same counts, only the fingerprint tells
        test_row["split"] = "train"
    _write_manifest(run / "split_manifest.csv", rows)
    argv = ["--model-dir", str(run / "model"), *HASH_ONLY, "--data-dir", str(trained["data"]),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert eval_main(argv) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "is not the split its run recorded" in line and str(run / "split_manifest.csv") in line


@pytest.mark.parametrize("damage", ["results_json", "manifest_not_text"])
def test_a_damaged_run_record_or_manifest_is_one_line(
    damage: str, trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = shutil.copytree(trained["out"], tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    argv = ["--model-dir", str(run / "model"), *HASH_ONLY, "--data-dir", str(trained["data"]),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    if damage == "results_json":
        (run / "results.json").write_text('{"config": {')  # a run killed while writing it
        expected, code = "results.json is not readable JSON", 1
    else:  # refused with the flags, before the model is loaded
        (tmp_path / "m.csv").write_bytes(bytes(range(256)) * 4)
        argv += ["--split-manifest", str(tmp_path / "m.csv")]
        expected, code = "not a split manifest", 2
    assert eval_main(argv) == code
    assert expected in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "cache").exists()


def test_the_data_command_does_not_rewrite_a_runs_record_of_its_split(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trashnet_hf.data.__main__ import main as data_main

    run = shutil.copytree(trained["out"], tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    before = (run / "split_manifest.csv").read_bytes()
    argv = [*HASH_ONLY, "--data-dir", str(trained["data"]), "--output-dir", str(run), "--seed", "7",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert data_main(argv) == 2
    err = capsys.readouterr().err
    assert "holds a training run" in err and err.count("\n") == 1 and "Traceback" not in err
    assert (run / "split_manifest.csv").read_bytes() == before


def test_a_model_with_its_classes_in_another_order_scores_the_same(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    # The same classifier with its outputs permuted: by position it would score nonsense, by name the same.
    order = [2, 0, 1]  # new output i is old output order[i]
    model_dir = shutil.copytree(trained["model"], tmp_path / "model")
    weights = load_file(model_dir / "model.safetensors")
    for key in ("fc.weight", "fc.bias"):
        weights[key] = weights[key][order].contiguous()
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((model_dir / "config.json").read_text())
    config["label_names"] = [config["label_names"][i] for i in order]
    (model_dir / "config.json").write_text(json.dumps(config))

    metrics_file = tmp_path / "m.json"
    argv = ["--model-dir", str(model_dir), *HASH_ONLY, "--data-dir", str(trained["data"]),
            "--cache-dir", str(trained["cache"]), "--metrics-file", str(metrics_file)]  # fmt: skip
    assert eval_main(argv) == 0
    got, expected = json.loads(metrics_file.read_text()), _test_metrics(trained)
    for key in ("accuracy", "macro_f1", "weighted_f1", "per_class"):
        assert got[key] == expected[key], key
    assert list(got["per_class"]) == [CLASSES[i] for i in order]  # reported in the model's order
    assert np.array_equal(
        np.array(got["confusion_matrix"]), np.array(expected["confusion_matrix"])[order][:, order]
    )
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def _direct_predictions(model_dir: Path, data: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Model ids of the test split's truth (matched by name) and of the model's predictions, computed
    without the evaluation module: the model applied to training's eval transform of each stored image."""
    model = load_model(model_dir).eval()
    pre = preprocessing_of(model)
    prepared = prepare_data(
        DataConfig(data_dir=str(data), cache_dir=str(cache), output_dir=str(cache / "unused"),
                   image_size=pre.image_size, crop_pct=pre.crop_pct, interpolation=pre.interpolation)
    )  # fmt: skip
    test = prepared.splits["test"]
    pixels = torch.from_numpy(np.stack([decode_pixels(b) for b in test["pixels"]]))
    with torch.no_grad():
        preds = model(pixel_values=EvalTransform(pre)(pixels)).logits.argmax(-1).numpy()
    truth = np.array([model.config.label2id[prepared.class_names[y]] for y in test["label"]])
    return truth, preds


def test_a_subset_of_the_classes_is_scored_over_the_model_classes(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    # Without the first class, every data label id is off by one from the model's: positions would not do.
    data = _copy_data(trained["data"], tmp_path / "data", {"alpha": None})
    metrics_file = tmp_path / "m.json"
    assert _evaluate(trained, tmp_path, "--metrics-file", str(metrics_file), data=data) == 0
    got = json.loads(metrics_file.read_text())

    truth, preds = _direct_predictions(trained["model"], data, tmp_path / "cache")
    assert set(truth) == {1, 2}
    assert got["accuracy"] == pytest.approx(accuracy_score(truth, preds))
    # macro-F1 over the classes in the truth or the predictions, so the absent class does not count.
    assert got["macro_f1"] == pytest.approx(f1_score(truth, preds, average="macro", zero_division=0))
    assert got["confusion_matrix"] == confusion_matrix(truth, preds, labels=[0, 1, 2]).tolist()
    assert list(got["per_class"]) == list(CLASSES)
    assert got["per_class"]["alpha"]["support"] == 0
    assert [got["per_class"][c]["support"] for c in ("beta", "gamma")] == [
        int((truth == 1).sum()),
        int((truth == 2).sum()),
    ]


def test_label_mapping_is_by_exact_name() -> None:
    assert label_mapping(["b", "c"], ["a", "b", "c"], None).tolist() == [1, 2]
    assert label_mapping(["c", "a", "b"], ["a", "b", "c"], None).tolist() == [2, 0, 1]
    with pytest.raises(
        UserError, match=r"'Trash'.*model classes: glass, trash.*'Trash' vs the model's 'trash'"
    ):
        label_mapping(["Trash", "glass"], ["glass", "trash"], "d")


def test_a_renamed_class_is_refused_listing_both_sets(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _copy_data(trained["data"], tmp_path / "data", {"gamma": "Gamma"})
    metrics_file = tmp_path / "m.json"
    assert _evaluate(trained, tmp_path, "--metrics-file", str(metrics_file), data=data) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "'Gamma'" in line
    assert "Data classes: Gamma, alpha, beta" in line and "model classes: alpha, beta, gamma" in line
    assert not metrics_file.exists()


@pytest.mark.slow
def test_the_command_line_exits_1_with_one_line(trained: dict[str, Path], tmp_path: Path) -> None:
    # The real process: exit status and stderr as a user sees them.
    data = _copy_data(trained["data"], tmp_path / "data", {"gamma": "Gamma"})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "trashnet_hf.training.evaluation", "--model-dir", str(trained["model"]),
         *HASH_ONLY, "--data-dir", str(data), "--cache-dir", str(trained["cache"]),
         "--metrics-file", str(tmp_path / "m.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "model classes: alpha, beta, gamma" in _one_error_line(proc.stderr)
    assert not (tmp_path / "m.json").exists()


# --- Bad inputs: one line naming the flag or file, before the data is prepared, nothing written ----------


def _edit_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BROKEN_MODELS = {
    "no_config": (lambda d: (d / "config.json").unlink(), "has no config.json"),
    "config_not_json": (
        lambda d: (d / "config.json").write_text("{oops"),
        "config.json is not readable JSON",
    ),
    "no_weights": (lambda d: (d / "model.safetensors").unlink(), "has no weights file model.safetensors"),
    "truncated_weights": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors is truncated"),
    "num_classes_edited": (lambda d: _edit_config(d, num_classes=5), "num_classes is 5"),
    "label_names_edited": (
        lambda d: _edit_config(d, label_names=["a", "b", "c", "d"], num_classes=4),
        "holds a 3-class head",
    ),
}


@pytest.mark.parametrize("case", BROKEN_MODELS)
def test_a_broken_model_folder_fails_with_one_line(
    case: str, trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    breaks, message = BROKEN_MODELS[case]
    model_dir = shutil.copytree(trained["model"], tmp_path / "model")
    breaks(model_dir)
    with pytest.raises(ModelLoadError, match=message):
        load_model(model_dir)
    capsys.readouterr()

    cache, metrics_file = tmp_path / "cache", tmp_path / "m.json"
    argv = ["--model-dir", str(model_dir), *HASH_ONLY, "--data-dir", str(trained["data"]),
            "--cache-dir", str(cache), "--metrics-file", str(metrics_file)]  # fmt: skip
    assert eval_main(argv) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert message in line and str(model_dir) in line
    assert not cache.exists()  # stopped before preparing the data
    assert not metrics_file.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model-dir", "{tmp}/no_such_model"], "--model-dir"),
        (["--model-dir", "{tmp}/a_file"], "--model-dir"),
        (["--eval-batch-size", "0"], "--eval-batch-size"),
        (["--split", "dev"], "--split"),
        (["--metrics-file", "{tmp}/no_such_folder/m.json"], "--metrics-file"),
        (["--metrics-file", "{tmp}"], "--metrics-file"),
        (["--eval-batch-size", "8", "--image-size", "0"], "--image-size"),
        (["--eval-batch", "8"], "unknown argument --eval-batch"),
    ],
)
def test_a_bad_flag_exits_2_naming_it_before_any_work(
    flags: list[str],
    message: str,
    trained: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "a_file").write_text("not a model")
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    if "--model-dir" not in flags:
        flags = ["--model-dir", str(trained["model"]), *flags]
    if "--metrics-file" not in flags:
        flags = [*flags, "--metrics-file", str(tmp_path / "m.json")]
    cache = tmp_path / "cache"
    assert eval_main([*flags, *HASH_ONLY, "--data-dir", str(trained["data"]), "--cache-dir", str(cache)]) == 2
    assert message in _one_error_line(capsys.readouterr().err)
    assert not cache.exists()
    assert not (tmp_path / "m.json").exists()


def test_eval_args_validate_when_built_in_code(trained: dict[str, Path]) -> None:
    model_dir = str(trained["model"])
    EvalArgs(model_dir=model_dir)
    for kwargs, flag in (
        ({"eval_batch_size": 0}, "--eval-batch-size"),
        ({"split": "dev"}, "--split"),
        ({"metrics_file": "/no/such/folder/m.json"}, "--metrics-file"),
    ):
        with pytest.raises(ConfigError, match=flag):
            EvalArgs(model_dir=model_dir, **kwargs)


def test_an_empty_split_is_refused_naming_it(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics_file = tmp_path / "m.json"
    shares = ["--train-share", "0.8", "--val-share", "0.2", "--test-share", "0"]
    assert _evaluate(trained, tmp_path, *shares, "--metrics-file", str(metrics_file)) == 1
    assert "--split test holds no images" in _one_error_line(capsys.readouterr().err)
    assert not metrics_file.exists()


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        eval_main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model-dir", "--split", "--eval-batch-size", "--metrics-file", "--data-dir", "--seed"):
        assert flag in text
    assert "matched by name" in text
