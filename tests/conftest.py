"""Shared fixtures: tiny synthetic image datasets made on the fly, no network."""

from __future__ import annotations

import gc
import importlib.util
import io
import os
import socket
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from huggingface_hub import constants
from PIL import Image

# Never touch the network from tests: the Hub and W&B are unreachable here anyway, and offline mode
# makes huggingface_hub fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

# Under pytest-xdist (pyproject.toml's addopts) each worker takes its share of the cores: two workers each
# running torch on both cores of this machine doubled the CPU time of the fast loop (5m09s against 2m34s).
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch  # in the workers only: the controlling process runs no test

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(workers)))

# Synthetic textures all look alike to the reference embedder (ImageNet features of noise chain them into
# one group across classes), so tests that train or split on them group by perceptual hash only. Tests on
# real photos (the bundled sample, ../shared) keep the embedder.
HASH_ONLY = ("--near-duplicate-threshold", "0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding slow tests first (a stable sort): under xdist the long ones then run side by side
    instead of ending the run on one core while the other waits."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move everything imported so far (torch, transformers, gradio: millions of objects) out of the
    garbage collector's sight: each full collection, pytest's five at the end included, then skips them
    (3 s per process at the end alone)."""
    gc.freeze()


REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "trashnet"
CLASSES = ("alpha", "beta", "gamma")


def photo(seed: int, size: tuple[int, int] = (128, 96)) -> Image.Image:
    """A random colour texture: distinct seeds give perceptual hashes far apart (>100 of 256 bits), while
    the same seed at two resolutions hashes within a few bits, like a photo and its resized copy. (A
    smoother image, say from 8x6 noise, has too little texture for a stable hash: twins drift ~30 bits.)"""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    return small.resize(size, Image.Resampling.BICUBIC)


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def make_image_folder(root: Path, per_class: int = 8, size: tuple[int, int] = (128, 96)) -> Path:
    """``root/<class>/<class><i>.jpg``, a distinct photo per file."""
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            photo(1000 * c + i, size).save(root / name / f"{name}{i}.jpg", quality=90)
    return root


def make_hub_zips(root: Path, per_class: int = 8) -> Path:
    """The Hub repo layout: two zips holding the same photos at two resolutions."""
    root.mkdir(parents=True, exist_ok=True)
    for stem, size in (("dataset-resized", (128, 96)), ("dataset-original", (512, 384))):
        with zipfile.ZipFile(root / f"{stem}.zip", "w") as z:
            for c, name in enumerate(CLASSES):
                for i in range(per_class):
                    z.writestr(f"{stem}/{name}/{name}{i}.jpg", jpeg_bytes(photo(1000 * c + i, size)))
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "folder")


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real TrashNet images not found at {REAL_DATA}")
    return REAL_DATA


CLASS_COLOURS = ((220, 40, 40), (40, 200, 60), (50, 70, 230))


def make_learnable_folder(root: Path, per_class: int = 16, size: tuple[int, int] = (64, 48)) -> Path:
    """Like ``make_image_folder``, but each class has its own dominant colour, so a model can learn it."""
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            texture = np.asarray(photo(1000 * c + i, size), dtype=np.float32)
            mixed = 0.35 * texture + 0.65 * np.array(CLASS_COLOURS[c], dtype=np.float32)
            Image.fromarray(mixed.astype(np.uint8)).save(root / name / f"{name}{i}.jpg", quality=90)
    return root


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(cache_dir: Path, repo_type: str, repo_id: str, files: dict[str, bytes]) -> Path:
    """Lay out files the way the Hub cache stores a snapshot of the main branch; return the snapshot."""
    repo_dir = cache_dir / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online mode, but the Hub endpoint is a local port nobody listens on (connection refused)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of one tiny training run (random-init ``test_resnet``, 32 px, learnable colours):
    model/, results.json, plots, data report, manifest. Shared by the session: copy it before changing it."""
    from trashnet_hf.core.config import TrainConfig
    from trashnet_hf.training.loop import train

    tmp = tmp_path_factory.mktemp("trained_run")
    cfg = TrainConfig(
        data_dir=str(make_learnable_folder(tmp / "data")), output_dir=str(tmp / "out"),
        cache_dir=str(tmp / "cache"), model_name="test_resnet", pretrained=False, image_size=32, epochs=2,
        batch_size=8, eval_batch_size=16, warmup_ratio=0.0, patience=0, report_to="none",
        near_duplicate_threshold=0,  # HASH_ONLY
        layer_decay=0.8,  # the tiny recipe the OOD and threshold tests were written against (default: 1)
    )  # fmt: skip
    assert train(cfg).status == "completed"
    return tmp / "out"


@pytest.fixture(scope="session")
def trashnet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``trained_run``, but trained on the bundled real TrashNet sample (``trashnet_hf/sample``, 420
    photos in the six classes; its CREDITS.md is not an image and the loader passes it by), with its OOD
    data fitted by default. ``trained_run``'s OOD score flags every real photo as foreign (it knows only
    coloured textures), so the tests that must show a normal result for a TrashNet photo, next to the
    "not waste" message for a foreign image, serve this model instead. Still tiny and fast: random-init
    ``test_resnet`` at 32 px, 2 epochs. Shared by the session: copy it before changing it."""
    from trashnet_hf import SAMPLE_DIR
    from trashnet_hf.core.config import TrainConfig
    from trashnet_hf.training.loop import train

    tmp = tmp_path_factory.mktemp("trashnet_run")
    cfg = TrainConfig(
        data_dir=str(SAMPLE_DIR), output_dir=str(tmp / "out"), cache_dir=str(tmp / "cache"),
        model_name="test_resnet", pretrained=False, image_size=32, epochs=2, batch_size=8,
        eval_batch_size=16, warmup_ratio=0.0, patience=0, report_to="none",
        near_duplicate_threshold=0,  # perceptual hash only: no pretrained embedder offline
        layer_decay=0.8,  # as trained_run: the recipe its tests were written against (default: 1)
    )  # fmt: skip
    assert train(cfg).status == "completed"
    return tmp / "out"


# A real photo that is not waste, from the scikit-image wheel (requirements.txt; bench/ood.py's foreign set).
ASTRONAUT = Path(importlib.util.find_spec("skimage").origin).parent / "data" / "astronaut.png"


def typical_test_photo(run: Path, classifier) -> Path:
    """The test-split photo of ``run`` (its split_manifest.csv) that ``classifier`` (a
    ``serving.classifier.Classifier``) gives the lowest OOD score: never in the OOD fit, and the photo most
    like its training photos. The caller asserts that it is not flagged."""
    from trashnet_hf.core.manifest import read_manifest
    from trashnet_hf.serving.classifier import open_image

    tests = [Path(r["path"]) for r in read_manifest(run / "split_manifest.csv") if r["split"] == "test"]
    assert tests, "the run's test split is empty"
    scores = [a.ood_score for a in classifier.assess([open_image(p) for p in tests])]
    return min(zip(scores, tests, strict=True))[1]


# The browser tests' chromium and their failure screenshots. Debian's chromium here and in .ci/run;
# GitHub's Ubuntu runners ship Google Chrome instead (ci.yml sets CHROMIUM to it), which Playwright drives
# the same way.
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))


@contextmanager
def screenshot_on_failure(page: Any, name: str) -> Iterator[None]:
    """Keep a full-page screenshot when the block fails (in $TEST_ARTIFACTS_DIR, else tmp/artifacts)."""
    try:
        yield
    except BaseException as err:
        folder = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / "tmp" / "artifacts")
        folder.mkdir(parents=True, exist_ok=True)
        shot = folder / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        err.add_note(f"screenshot of the page: {shot}")
        raise
