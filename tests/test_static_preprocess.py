"""The static Space's page (trashnet_hf/hub/static_space) computes the model input in the browser exactly as
Python does: its Pillow resize port, its alpha composite and its whole preprocessing are run in Debian's
chromium on real photos and odd sizes and compared with Pillow and with the Classifier's own transform,
byte for byte and float for float (max abs diff 0, no tolerance). The page is served without model.json
or onnxruntime-web, so this also checks that it then says so in one line and that its preprocessing still
loads; bad inputs are refused before any model is needed."""

from __future__ import annotations

import functools
import http.server
import io
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from transformers import TimmWrapperImageProcessor

from tests.conftest import CHROMIUM, screenshot_on_failure
from trashnet_hf.core.preprocessing import Preprocessing

ROOT = Path(__file__).resolve().parents[1]

STATIC = ROOT / "trashnet_hf" / "hub" / "static_space"
PAGE_FILES = ("index.html", "app.js", "preprocess.js", "style.css")
SAMPLE = ROOT / "trashnet_hf" / "sample"
CLASSES = ("cardboard", "glass", "metal", "paper", "plastic", "trash")
HALF = (0.5, 0.5, 0.5)  # the fine-tuned Lite0's mean and std; the others use timm's ImageNet defaults
CONFIGS = [
    Preprocessing(160, 0.875, "bicubic", mean=HALF, std=HALF),
    Preprocessing(160, 0.95, "bicubic"),
    Preprocessing(224, 0.875, "bicubic"),
    Preprocessing(224, 0.95, "bicubic", mean=HALF, std=HALF),
    Preprocessing(160, 0.875, "bilinear"),
    Preprocessing(224, 0.95, "bilinear", mean=HALF, std=HALF),
]
FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}: apt-get install -y chromium"),
]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def photos() -> dict[str, Image.Image]:
    """Real photos (two per class, TrashNet's 512x384) and odd sizes made from them: a 12 MP phone-sized
    upscale, odd and thin sides, a square, upsampled small ones, one already at the resize size."""
    images = {}
    for label in CLASSES:
        for path in sorted((SAMPLE / label).glob("*.jpg"))[:2]:
            images[path.stem] = Image.open(path).convert("RGB")
    for w, h, src in [
        (4032, 3024, "glass1"),
        (333, 517, "paper1"),
        (97, 1201, "glass1"),
        (40, 40, "paper1"),
        (50, 37, "glass1"),
        (182, 243, "paper1"),  # 160 px at crop 0.875: already the resize size, so no resize
    ]:
        images[f"{src}_{w}x{h}"] = images[src].resize((w, h), Image.LANCZOS)
    return images


def targets(w: int, h: int, more: bool) -> list[tuple[int, int]]:
    """Resize targets: the preprocessing's own (down or up); with ``more``, odd ones, and one axis kept
    (one pass only), both axes upsampled when the image is small."""
    out = set()
    if more:
        out |= {(w // 3 + 1, h // 2 + 1), (160, 160)}
    if more and w * h < 1_000_000:
        out |= {(w, max(1, h // 2)), (max(1, w // 2), h), (2 * w + 1, h + 7), (w + 3, 3 * h)}
    for cfg in CONFIGS[:4]:
        short = cfg.resize_size
        out.add((short, int(short * h / w)) if w <= h else (int(short * w / h), short))
    return sorted(out)


@pytest.fixture(scope="module")
def images(site: tuple[str, Path]) -> dict[str, Image.Image]:
    """photos(), also written to the served folder as NAME.rgb (packed RGB bytes)."""
    _, folder = site
    images = photos()
    for name, im in images.items():
        (folder / f"{name}.rgb").write_bytes(im.tobytes())
    return images


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The page's files (no model.json, no onnxruntime-web, no model) on a loopback port, plus the
    test data the page fetches."""
    folder = tmp_path_factory.mktemp("static_space")
    for name in PAGE_FILES:
        shutil.copy(STATIC / name, folder / name)
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def page(site: tuple[str, Path]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    url, _ = site
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "index.html")
        page.wait_for_function("document.body.dataset.state === 'error'", timeout=30_000)
        yield page
        browser.close()


# Runs the cases in the page: each reads its input and its expected output (written by Python) from the
# server, runs window.trashnet's function and reports how many values differ and by how much at most.
RUN_CASES = """async (cases) => {
  const cache = new Map();
  const load = async (name) => {
    if (!cache.has(name)) {
      const response = await fetch(name);
      if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
      cache.set(name, new Uint8Array(await response.arrayBuffer()));
    }
    return cache.get(name);
  };
  const rgba = (rgb) => {
    const out = new Uint8Array((rgb.length / 3) * 4);
    for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
      out[j] = rgb[i]; out[j + 1] = rgb[i + 1]; out[j + 2] = rgb[i + 2]; out[j + 3] = 255;
    }
    return out;
  };
  const compare = (got, expected) => {
    let differ = 0, maxDiff = 0, first = null;
    for (let i = 0; i < expected.length; i++) {
      const d = Math.abs(got[i] - expected[i]);
      if (d !== 0 || Number.isNaN(d)) {
        differ += 1;
        maxDiff = Math.max(maxDiff, d);
        if (first === null) first = [i, got[i], expected[i]];
      }
    }
    return { length: got.length, expectedLength: expected.length, differ, maxDiff, first };
  };
  const results = [];
  for (const c of cases) {
    const src = await load(c.src);
    const expected = await load(c.expected);
    let got, want = expected;
    if (c.kind === 'resize') {
      got = window.trashnet.resize(src, c.w, c.h, c.nw, c.nh, c.interpolation);
    } else if (c.kind === 'composite') {
      got = window.trashnet.compositeOnWhite(src, c.w, c.h);
    } else {
      const input = c.alpha ? src : rgba(src);
      got = window.trashnet.preprocess(input, c.w, c.h, c.cfg);
      want = new Float32Array(expected.buffer, expected.byteOffset, expected.length / 4);
    }
    results.push({ name: c.name, ...compare(got, want) });
  }
  return results;
}"""


def run_cases(page: Any, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = page.evaluate(RUN_CASES, cases)
    assert [r["name"] for r in results] == [c["name"] for c in cases]
    return results


def assert_identical(results: list[dict[str, Any]]) -> None:
    bad = [r for r in results if r["differ"] or r["length"] != r["expectedLength"]]
    assert not bad, f"{len(bad)}/{len(results)} cases differ, e.g. {bad[:3]}"


def js_cfg(cfg: Preprocessing) -> dict[str, Any]:
    return {
        "image_size": cfg.image_size, "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation,
        "mean": list(cfg.mean), "std": list(cfg.std),
    }  # fmt: skip


def test_page_loads_without_model_and_says_so(page: Any) -> None:
    with screenshot_on_failure(page, "test_static_page_without_model"):
        assert page.evaluate("typeof window.trashnet.preprocess") == "function"
        assert page.evaluate("typeof window.trashnet.resize") == "function"
        error = page.inner_text("#error")
        assert error.startswith("Could not load the model: model.json: HTTP 404"), error
        assert "\n" not in error


def test_resize_matches_pillow_byte_for_byte(
    page: Any, site: tuple[str, Path], images: dict[str, Image.Image]
) -> None:
    _, folder = site
    cases = []
    for i, (name, im) in enumerate(images.items()):
        w, h = im.size
        for nw, nh in targets(w, h, more=i % 2 == 0 or (w, h) != (512, 384)):
            for interpolation, flt in FILTERS.items():
                expected = f"{name}.{nw}x{nh}.{interpolation}.out"
                (folder / expected).write_bytes(im.resize((nw, nh), flt).tobytes())
                cases.append({
                    "name": expected, "kind": "resize", "src": f"{name}.rgb", "expected": expected,
                    "w": w, "h": h, "nw": nw, "nh": nh, "interpolation": interpolation,
                })  # fmt: skip
    assert len(cases) > 100
    with screenshot_on_failure(page, "test_static_resize"):
        assert_identical(run_cases(page, cases))


def test_preprocess_matches_the_classifier_exactly(
    page: Any, site: tuple[str, Path], images: dict[str, Image.Image]
) -> None:
    """The Classifier's (and pipeline()'s) transform: timm's eval transform that transformers builds from
    the model's pretrained_cfg. Max abs diff 0: every float32 equal."""
    _, folder = site
    cases = []
    for i, cfg in enumerate(CONFIGS):
        transform = TimmWrapperImageProcessor(pretrained_cfg=cfg.to_pretrained_cfg()).val_transforms
        for name, im in images.items():
            expected = f"{name}.cfg{i}.f32"
            tensor = transform(im).numpy()
            assert tensor.shape == (3, cfg.image_size, cfg.image_size)
            (folder / expected).write_bytes(tensor.astype("<f4").tobytes())
            cases.append({
                "name": expected, "kind": "preprocess", "src": f"{name}.rgb", "expected": expected,
                "w": im.width, "h": im.height, "cfg": js_cfg(cfg), "alpha": False,
            })  # fmt: skip
    with screenshot_on_failure(page, "test_static_preprocess"):
        assert_identical(run_cases(page, cases))


def every_alpha(width: int = 256) -> Image.Image:
    """RGBA rows of every alpha value (row a has alpha a) over varied colours, every byte in each column."""
    v = np.arange(width, dtype=np.uint16)
    arr = np.empty((256, width, 4), np.uint8)
    arr[..., 0] = v
    arr[..., 1] = 255 - v
    arr[..., 2] = (v * 7 + 13) % 256
    arr[..., 3] = np.arange(256, dtype=np.uint8)[:, None]
    return Image.fromarray(arr, "RGBA")


def test_alpha_composite_matches_pillow(page: Any, site: tuple[str, Path]) -> None:
    """Pillow's Image.alpha_composite over opaque white (decoding._to_rgb's), for every alpha and byte;
    then the whole preprocessing of a semi-transparent image."""
    _, folder = site
    rgba = every_alpha()
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, rgba).convert("RGB")
    (folder / "alpha.rgba").write_bytes(rgba.tobytes())
    (folder / "alpha.out").write_bytes(flat.tobytes())
    cases = [{
        "name": "composite", "kind": "composite", "src": "alpha.rgba", "expected": "alpha.out",
        "w": rgba.width, "h": rgba.height,
    }]  # fmt: skip
    # A photo with a gradient alpha, through the whole preprocessing.
    photo = Image.open(SAMPLE / "metal" / sorted(p.name for p in (SAMPLE / "metal").glob("*.jpg"))[0])
    photo = photo.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, photo.width).astype(np.uint8), (photo.height, 1))
    photo.putalpha(Image.fromarray(alpha, "L"))
    (folder / "metal_alpha.rgba").write_bytes(photo.tobytes())
    flat_photo = Image.alpha_composite(Image.new("RGBA", photo.size, (255,) * 4), photo).convert("RGB")
    for i, cfg in enumerate(CONFIGS[:2]):
        transform = TimmWrapperImageProcessor(pretrained_cfg=cfg.to_pretrained_cfg()).val_transforms
        (folder / f"metal_alpha.cfg{i}.f32").write_bytes(
            transform(flat_photo).numpy().astype("<f4").tobytes()
        )
        cases.append({
            "name": f"metal_alpha.cfg{i}", "kind": "preprocess", "src": "metal_alpha.rgba",
            "expected": f"metal_alpha.cfg{i}.f32", "w": photo.width, "h": photo.height, "cfg": js_cfg(cfg),
            "alpha": True,
        })  # fmt: skip
    with screenshot_on_failure(page, "test_static_alpha"):
        assert_identical(run_cases(page, cases))


def png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


BAD_INPUTS = [
    ("empty.jpg", b"", "empty.jpg: 0 bytes (an empty file), not an image"),
    ("notes.jpg", b"hello, not a photo", "notes.jpg: not an image the browser can decode"),
    ("tiny.png", png((31, 200)), "tiny.png: 31x200 pixels is too small to recognise anything"),
    ("thin.png", png((40, 801)), "thin.png: 40x801 pixels is too thin to classify (sides over 20:1)"),
]


def wait_for_error(page: Any) -> str:
    page.wait_for_function("document.body.dataset.state === 'error'", timeout=10_000)
    error = page.inner_text("#error")
    assert "\n" not in error
    assert page.eval_on_selector_all("#results li", "els => els.length") == 0
    return error


@pytest.mark.parametrize(("name", "payload", "expected"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_before_any_model(page: Any, name: str, payload: bytes, expected: str) -> None:
    """Checked before the model is needed (here there is none)."""
    with screenshot_on_failure(page, f"test_static_bad_input_{name}"):
        page.evaluate("document.body.dataset.state = 'ready'")
        page.set_input_files("#file", files=[{"name": name, "mimeType": "image/jpeg", "buffer": payload}])
        error = wait_for_error(page)
        assert error.startswith(expected), error


def test_too_many_bytes_is_refused_before_decoding(page: Any) -> None:
    """A file over 20 MB (made in the page: no 20 MB over the wire) is refused on its size alone."""
    with screenshot_on_failure(page, "test_static_too_many_bytes"):
        page.evaluate("document.body.dataset.state = 'ready'")
        page.evaluate(
            """() => window.trashnet.classifyFile(
                new File([new Uint8Array(20 * 1024 * 1024 + 1).fill(255)], 'huge.jpg', {type: 'image/jpeg'})
            ).catch(() => null)"""
        )
        error = wait_for_error(page)
        assert error == "huge.jpg: 20.0 MB, over the 20 MB limit for one photo", error
