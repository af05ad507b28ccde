"""model.py: the saved folder works with pipeline() and timm, and carries the training preprocessing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save
from transformers import pipeline

from tests.conftest import fake_cache
from trashnet_hf.core.model import (
    DEFAULT_MODEL_NAME,
    build_model,
    load_model,
    preprocessing_of,
    save_model,
    timm_architecture,
)
from trashnet_hf.core.preprocessing import Preprocessing

CLASSES = ("glass", "paper", "trash")
PREP = Preprocessing(image_size=64, crop_pct=0.9, interpolation="bilinear", mean=(0.5, 0.4, 0.3))


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A random-init model saved once for the module, with Hub access switched off throughout."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = build_model(DEFAULT_MODEL_NAME, CLASSES, PREP, pretrained=False, seed=0)
        yield save_model(model, tmp_path_factory.mktemp("model"))


def _image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return model.state_dict()


def test_timm_architecture_is_resolved_offline() -> None:
    assert timm_architecture("timm/resnet18.a1_in1k") == "resnet18"
    assert timm_architecture("hf-hub:timm/resnet50.a1_in1k") == "resnet50"
    assert timm_architecture("resnet18") == "resnet18"
    for name in ("someone/my-model", "timm/not_a_real_arch.x"):
        with pytest.raises(ValueError, match="timm architecture"):
            timm_architecture(name)


def test_class_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        build_model(DEFAULT_MODEL_NAME, ["a", "a"], PREP, pretrained=False)


def test_pipeline_labels_and_scores_follow_the_preprocessing(saved_dir: Path) -> None:
    classifier = pipeline("image-classification", model=str(saved_dir))
    result = classifier(_image(), top_k=len(CLASSES))
    assert sorted(r["label"] for r in result) == sorted(CLASSES)
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5)
    expected = PREP.to_pretrained_cfg()
    data_config = classifier.image_processor.data_config
    assert list(data_config["input_size"]) == expected["input_size"]
    for key in ("crop_pct", "crop_mode", "interpolation"):
        assert data_config[key] == expected[key]
    assert list(data_config["mean"]) == expected["mean"] and list(data_config["std"]) == expected["std"]

    # And the scores equal the model applied to timm's eval transform built from PREP alone.
    transform = timm.data.create_transform(**{**expected, "input_size": tuple(expected["input_size"])})
    model = load_model(saved_dir).eval()
    with torch.no_grad():
        probs = model(transform(_image()).unsqueeze(0)).logits.softmax(-1)[0]
    scores = {r["label"]: r["score"] for r in result}
    assert [scores[name] for name in CLASSES] == pytest.approx(probs.tolist(), abs=1e-5)


def test_saved_config_carries_the_preprocessing(saved_dir: Path) -> None:
    config = json.loads((saved_dir / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    assert {k: cfg[k] for k in PREP.to_pretrained_cfg()} == PREP.to_pretrained_cfg()
    assert Preprocessing.from_pretrained_cfg(cfg) == PREP
    assert cfg["num_classes"] == config["num_classes"] == len(CLASSES)
    assert config["model_args"] == {}  # transformers writes null, which timm cannot load
    assert config["label_names"] == list(CLASSES)
    assert preprocessing_of(load_model(saved_dir)) == PREP


def test_timm_loads_the_same_weights(saved_dir: Path) -> None:
    wrapped = load_model(saved_dir).eval()
    native = timm.create_model(f"local-dir:{saved_dir}", pretrained=True).eval()
    expected, loaded = _state(wrapped.timm_model), _state(native)
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(expected[k], loaded[k]) for k in expected)
    assert native.pretrained_cfg["crop_pct"] == PREP.crop_pct
    pixels = torch.randn(2, 3, PREP.image_size, PREP.image_size)
    with torch.no_grad():
        torch.testing.assert_close(native(pixels), wrapped(pixels).logits)


def test_random_init_is_deterministic_per_seed() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = _state(build_model(DEFAULT_MODEL_NAME, CLASSES, PREP, pretrained=False, seed=7))
    # Building does not consume the caller's RNG stream.
    assert torch.equal(torch.rand(3), expected_next)
    again = _state(build_model(DEFAULT_MODEL_NAME, CLASSES, PREP, pretrained=False, seed=7))
    other = _state(build_model(DEFAULT_MODEL_NAME, CLASSES, PREP, pretrained=False, seed=8))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["timm_model.conv1.weight"], other["timm_model.conv1.weight"])


def _cache_timm_checkpoint(cache_dir: Path) -> dict[str, torch.Tensor]:
    """A Hub-cache copy of a 1000-class timm resnet18 repo, as timm 1.0.31 would export it."""
    source = timm.create_model("resnet18", pretrained=False)
    config = {
        "architecture": "resnet18",
        "num_classes": 1000,
        "num_features": 512,
        # timm 1.0.31 exports put num_classes here, which the transformers wrapper also passes.
        "model_args": {"in_chans": 3, "num_classes": 1000, "global_pool": "avg"},
        "pretrained_cfg": {
            "tag": "a1_in1k",
            "input_size": [3, 224, 224],
            "test_input_size": [3, 288, 288],
            "crop_pct": 0.95,
            "test_crop_pct": 1.0,
            "interpolation": "bicubic",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "num_classes": 1000,
            "pool_size": [7, 7],
            "first_conv": "conv1",
            "classifier": "fc",
        },
    }
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": save(source.state_dict())}
    fake_cache(cache_dir, "model", "timm/resnet18.a1_in1k", files)
    return source.state_dict()


def test_pretrained_weights_come_from_the_cache_with_a_new_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = _cache_timm_checkpoint(tmp_path / "cache")
    model = build_model(DEFAULT_MODEL_NAME, CLASSES, PREP, pretrained=True, cache_dir=str(tmp_path / "cache"))
    state = _state(model.timm_model)
    assert torch.equal(state["conv1.weight"], source["conv1.weight"])
    assert state["fc.weight"].shape == (len(CLASSES), 512)
    assert model.config.id2label == dict(enumerate(CLASSES))
    assert model.config.name_or_path == DEFAULT_MODEL_NAME
    # The checkpoint's own test-time sizes and ImageNet crop must not leak into the saved preprocessing.
    cfg = json.loads((save_model(model, tmp_path / "out") / "config.json").read_text())["pretrained_cfg"]
    assert Preprocessing.from_pretrained_cfg(cfg) == PREP
    assert "test_input_size" not in cfg and "test_crop_pct" not in cfg
    assert timm.data.resolve_data_config(model=model.timm_model)["crop_pct"] == PREP.crop_pct
