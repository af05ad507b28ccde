"""The OOD ("not waste") score: fitted by training, saved with the model, served by torch and ONNX alike."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import photo
from PIL import Image
from safetensors.torch import save_file
from transformers import pipeline

from trashnet_hf.core import ood
from trashnet_hf.core.config import TrainConfig
from trashnet_hf.core.errors import ConfigError
from trashnet_hf.core.manifest import read_manifest
from trashnet_hf.core.model import ModelLoadError, build_model, load_model, save_model
from trashnet_hf.core.model_meta import OOD_FILE, OOD_KEYS, OOD_THRESHOLD_KEY
from trashnet_hf.core.preprocessing import Preprocessing
from trashnet_hf.serving import onnx as export_onnx
from trashnet_hf.serving import predict
from trashnet_hf.serving.classifier import ONNX_OOD_OUTPUT, Classifier, open_image
from trashnet_hf.training import ood as ood_step


def checkerboard() -> Image.Image:
    board = np.indices((64, 64)).sum(0) // 8 % 2 * 255
    return Image.fromarray(np.stack([board] * 3, -1).astype(np.uint8))


def noise() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def real_photos(run: Path, n: int = 4) -> list[Image.Image]:
    """The first ``n`` test photos of a training run (learnable colours, not fitted on)."""
    rows = [r for r in read_manifest(run / "split_manifest.csv") if r["split"] == "test"]
    return [open_image(r["path"]) for r in rows[:n]]


@pytest.fixture(scope="module")
def model_dir(trained_run: Path) -> Path:
    return trained_run / "model"


@pytest.fixture(scope="module")
def onnx_file(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ood_onnx") / "model.onnx"
    assert export_onnx.main([str(model_dir), "--output", str(out)]) == 0
    return out


def test_features_then_head_equal_the_models_forward() -> None:
    model = build_model("test_resnet", ["a", "b", "c"], Preprocessing(image_size=32), pretrained=False).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        features, logits = ood.features_and_logits(model.timm_model, x)
        assert torch.equal(logits, model(pixel_values=x).logits)
    assert features.shape == (3, ood.feature_dim(model.timm_model))


def test_scorer_is_the_mahalanobis_distance_to_the_nearest_class_mean() -> None:
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 10.0, 0.1])  # the distance must undo each channel's spread, unlike a plain one
    features = np.concatenate([rng.standard_normal((200, 3)) * scale + c for c in (0.0, 5.0)])
    labels = np.repeat([0, 1], 200)
    scorer = ood.fit_scorer(features, labels, "layer3")
    assert scorer.means_.shape == (2, 3) and scorer.whiten.shape == (3, 3) and scorer.layer == "layer3"
    x = np.array([[0.0, 0.0, 0.0], [0.0, 20.0, 0.0], [0.0, 0.0, 2.0], [5.0, 5.0, 5.0]])
    scores = scorer(torch.from_numpy(x).float()).numpy()
    # numpy's own Mahalanobis: pooled within-class covariance, shrunk as SHRINKAGE says on standardised data
    sd = features.std(0) + 1e-6
    z = features / sd
    means = np.stack([z[labels == c].mean(0) for c in (0, 1)])
    cov = np.cov((z - means[labels]).T, bias=True)
    cov = (1 - ood.SHRINKAGE) * cov + ood.SHRINKAGE * np.trace(cov) / 3 * np.eye(3)
    d = x[:, None, :] / sd - means[None]
    expected = np.sqrt(np.einsum("nkc,cd,nkd->nk", d, np.linalg.inv(cov), d).min(1))
    np.testing.assert_allclose(scores, expected, rtol=1e-4)
    assert scores[1] < scores[2]  # 20 along the wide channel is nearer than 2 along the narrow one
    with pytest.raises(ValueError, match="means \\(K, C\\) and whiten \\(C, C\\)"):
        ood.OodScorer(torch.zeros(2, 3), torch.zeros(4, 4), "layer3")


def test_scored_stage_is_the_stride_16_one() -> None:
    import timm

    for name, layer in (("tf_efficientnet_lite0", "blocks.4"), ("resnet18", "layer3")):
        assert ood.ood_layer(timm.create_model(name, pretrained=False)) == layer


def test_training_saved_the_ood_data_and_flags_the_rate_of_val(trained_run: Path, model_dir: Path) -> None:
    block = json.loads((trained_run / "results.json").read_text())["ood"]
    config = json.loads((model_dir / "config.json").read_text())
    assert (model_dir / OOD_FILE).is_file() and all(key in config for key in OOD_KEYS)
    assert config[OOD_THRESHOLD_KEY] == block["threshold"] and config["ood_method"] == "mahalanobis"
    assert block["layer"] == config["ood_layer"] == "layer3" and "95th percentile" in block["rule"]
    n_train, n_val = (sum(r["split"] == s for r in read_manifest(trained_run / "split_manifest.csv"))
                      for s in ("train", "val"))  # fmt: skip
    width = block["width"]
    assert block["fitted_on"] == n_train and block["bytes"] == 4 * (width * width + 3 * width)  # 3 classes
    assert (model_dir / OOD_FILE).stat().st_size < block["bytes"] + 1000
    assert block["val_flagged_share"] == round(block["flag_rate"] * n_val) / n_val
    # Served, the validation photos are flagged as training counted them (within one photo).
    rows = [r for r in read_manifest(trained_run / "split_manifest.csv") if r["split"] == "val"]
    served = Classifier.load(model_dir, "cpu").assess([open_image(r["path"]) for r in rows])
    assert abs(np.mean([a.foreign for a in served]) - block["val_flagged_share"]) <= 1 / n_val


def test_threshold_flags_the_chosen_share() -> None:
    scores = np.random.default_rng(0).random(1000)
    for rate in (0.01, 0.05, 0.2):
        share = float((scores > ood_step.threshold_for(scores, rate)).mean())
        assert share == round(rate * len(scores)) / len(scores)


def test_torch_and_onnx_agree_and_foreign_photos_are_flagged(
    trained_run: Path, model_dir: Path, onnx_file: Path
) -> None:
    images = [*real_photos(trained_run), checkerboard(), noise()]
    torch_side = Classifier.load(model_dir, "cpu")
    onnx_side = Classifier.load(onnx_file)
    assert ONNX_OOD_OUTPUT in {o.name for o in onnx.load(str(onnx_file)).graph.output}
    assert onnx_side.ood_threshold == pytest.approx(torch_side.ood_threshold, abs=0)
    assert onnx_side.ood_rule == torch_side.ood_rule and "layer3" in torch_side.ood_rule
    ours, theirs = torch_side.assess(images), onnx_side.assess(images)
    assert [a.foreign for a in ours] == [a.foreign for a in theirs]
    np.testing.assert_allclose([a.ood_score for a in ours], [a.ood_score for a in theirs], rtol=1e-4)
    # The tiny model's features do separate them: the checkerboard lies far from every real photo.
    real = max(a.ood_score for a in ours[:-2])
    assert ours[-2].foreign and ours[-2].ood_score > 10 * real
    assert [a.ranked for a in ours] == torch_side.predict(images)  # the score never changes the answer
    for a, b in zip(theirs, onnx_side.predict(images), strict=True):
        assert a.ranked == b


def test_without_ood_data_top1_and_pipeline_are_unchanged(
    trained_run: Path, model_dir: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "model"
    shutil.copytree(model_dir, bare)
    (bare / OOD_FILE).unlink()
    config = json.loads((bare / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in OOD_KEYS}))
    images = [*real_photos(trained_run), checkerboard()]
    with_ood, without = Classifier.load(model_dir, "cpu"), Classifier.load(bare, "cpu")
    assert without.ood_threshold is None and without.ood_rule is None
    assessed = without.assess(images)
    assert all(a.ood_score is None and not a.foreign for a in assessed)
    assert [a.ranked for a in assessed] == with_ood.predict(images) == without.predict(images)
    for folder in (model_dir, bare):
        served = pipeline("image-classification", model=str(folder), device="cpu")
        theirs = served(images, top_k=len(with_ood.labels))
        for mine, their in zip(with_ood.predict(images), theirs, strict=True):
            assert [p["label"] for p in mine] == [p["label"] for p in their]
            np.testing.assert_allclose([p["score"] for p in mine], [p["score"] for p in their], atol=1e-5)
    # Exported without OOD data: one output, no threshold in the metadata.
    out = tmp_path / "bare.onnx"
    assert export_onnx.main([str(bare), "--output", str(out)]) == 0
    plain = Classifier.load(out)
    assert plain.ood_threshold is None and [o.name for o in onnx.load(str(out)).graph.output] == ["logits"]
    assert all(a.ood_score is None and not a.foreign for a in plain.assess(images))


def test_damaged_ood_file_is_one_line_naming_it(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    path = folder / OOD_FILE
    save_file({"means": torch.zeros(3, 7), "whiten": torch.zeros(7, 7)}, str(path))  # another model's width
    with pytest.raises(ModelLoadError, match=r"ood\.safetensors holds \{'means': \(3, 7\)") as err:
        load_model(folder)
    assert "\n" not in str(err.value) and "delete it" in str(err.value)
    path.write_bytes(b"\x00" * 10)  # truncated
    with pytest.raises(ModelLoadError, match=r"ood\.safetensors is truncated"):
        Classifier.load(folder, "cpu")
    shutil.copy(model_dir / OOD_FILE, path)
    config = json.loads((folder / "config.json").read_text())
    del config[OOD_THRESHOLD_KEY]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="a number ood_threshold"):
        load_model(folder)
    config[OOD_THRESHOLD_KEY], config["ood_method"] = 1.0, "knn-cosine"  # saved by an older version
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"needs ood_method='mahalanobis'.*got 'knn-cosine'"):
        load_model(folder)


def test_save_model_drops_stale_ood_data(model_dir: Path, tmp_path: Path) -> None:
    model = load_model(model_dir)
    assert ood.scorer_of(model) is not None
    assert not any(k.startswith("_trashnet") for k in model.state_dict())  # model.safetensors stays plain
    ood.attach(model, None)
    save_model(model, tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert not (tmp_path / "model" / OOD_FILE).exists() and not set(OOD_KEYS) & set(saved)


def test_predict_cli_writes_ood_columns(trained_run: Path, onnx_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    checkerboard().save(folder / "board.png")
    photo(3, (64, 48)).save(folder / "other.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out.csv"
    assert predict.main([str(folder), "--model", str(onnx_file), "--output", str(out)]) == 0
    with out.open(newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == ["path", "error", "label_1", "score_1", "label_2", "score_2", "label_3", "score_3",
                      "ood_score", "not_waste"]  # fmt: skip
    by_name = {Path(r[0]).name: dict(zip(header, r, strict=True)) for r in rows}
    assert by_name["board.png"]["not_waste"] == "true" and float(by_name["board.png"]["ood_score"]) > 0.1
    assert by_name["broken.jpg"]["ood_score"] == by_name["broken.jpg"]["not_waste"] == ""
    out_json = tmp_path / "out.json"
    assert predict.main([str(folder), "--model", str(onnx_file), "--format", "json", "--output",
                         str(out_json)]) == 0  # fmt: skip
    items = {Path(i["path"]).name: i for i in json.loads(out_json.read_text())}
    assert list(items["board.png"]) == ["path", "error", "predictions", "ood_score", "not_waste"]
    assert items["board.png"]["not_waste"] is True and items["broken.jpg"]["not_waste"] is None
    assert items["board.png"]["ood_score"] == pytest.approx(
        float(by_name["board.png"]["ood_score"]), abs=1e-6
    )


def test_config_checks_the_ood_flags() -> None:
    for rate in (0.5, -0.1):
        with pytest.raises(ConfigError, match="--ood-flag-rate must"):
            TrainConfig(data_dir=".", report_to="none", ood_flag_rate=rate)
