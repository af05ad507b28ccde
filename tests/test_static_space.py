"""The static Space: built by the publish dry-run, its vendored runtime checked, and the page driven in
Debian's chromium on the bundled sample photos, its answers compared with ``Classifier`` (ONNX, Python)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import shutil
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from huggingface_hub import SpaceCard
from PIL import Image

from tests.conftest import ASTRONAUT, CHROMIUM, screenshot_on_failure, typical_test_photo
from trashnet_hf import SAMPLE_DIR
from trashnet_hf.hub import publish, static
from trashnet_hf.hub.publish import PublishArgs
from trashnet_hf.serving.classifier import Classifier, open_image
from trashnet_hf.serving.hints import BIN_HINTS, FOREIGN_MESSAGE

needs_ort_web = pytest.mark.skipif(
    static.cached_tarball() is None,
    reason="onnxruntime-web is not cached: run `python -m trashnet_hf.hub.static` once (CI does)",
)
PER_CLASS = 10  # 60 bundled sample photos: the first ten of each class


def sample_photos() -> list[Path]:
    return [
        p
        for c in sorted(d for d in SAMPLE_DIR.iterdir() if d.is_dir())
        for p in sorted(c.glob("*.jpg"))[:PER_CLASS]
    ]


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# --- The vendored runtime ---------------------------------------------------------------------------


def fake_tarball(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """An npm-style tarball holding ``files`` under package/dist/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/dist/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path = tmp_path / "onnxruntime-web.tgz"
    path.write_bytes(buffer.getvalue())
    return path


def pin(monkeypatch: pytest.MonkeyPatch, tarball: Path, files: dict[str, bytes]) -> None:
    """Make ``tarball`` and ``files`` the pinned ones (npm integrity and per-file SHA-256)."""
    import base64

    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    monkeypatch.setattr(static, "ORT_WEB_INTEGRITY", integrity)
    monkeypatch.setattr(static, "ORT_WEB_FILES", {n: hashlib.sha256(d).hexdigest() for n, d in files.items()})


def test_vendoring_checks_the_tarball_and_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"ort.wasm.min.mjs": b"export const x = 1;", "ort-wasm-simd-threaded.wasm": b"\0asm" + bytes(64)}
    tarball = fake_tarball(tmp_path, files)
    pin(monkeypatch, tarball, files)
    assert static.vendor_ort_web(tmp_path / "ok", tarball) == [*files, "LICENSE"]
    assert {n: (tmp_path / "ok" / n).read_bytes() for n in files} == files
    assert "MIT License" in (tmp_path / "ok" / "LICENSE").read_text()

    # A tarball that is not the pinned one is refused before anything is extracted...
    (tmp_path / "other").mkdir()
    other = fake_tarball(tmp_path / "other", {**files, "extra": b"1"})
    with pytest.raises(static.VendorError, match=r"not onnxruntime-web 1\.31\.1 as published on npm"):
        static.vendor_ort_web(tmp_path / "bad1", other)
    # ...and a file whose SHA-256 is not pinned is refused, naming it, even inside a trusted tarball.
    monkeypatch.setattr(static, "ORT_WEB_FILES", {**static.ORT_WEB_FILES, "ort.wasm.min.mjs": "0" * 64})
    with pytest.raises(
        static.VendorError, match=r"package/dist/ort.wasm.min.mjs: SHA-256 \w+ is not the pinned"
    ):
        static.vendor_ort_web(tmp_path / "bad2", tarball)


@needs_ort_web
def test_the_cached_tarball_matches_the_pins_in_the_repo(tmp_path: Path) -> None:
    written = static.vendor_ort_web(tmp_path / "ort")
    for name in static.ORT_WEB_FILES:
        assert (
            hashlib.sha256((tmp_path / "ort" / name).read_bytes()).hexdigest() == static.ORT_WEB_FILES[name]
        )
    assert written == [*static.ORT_WEB_FILES, "LICENSE"]
    assert sum((tmp_path / "ort" / n).stat().st_size for n in static.ORT_WEB_FILES) < 16 * 1024 * 1024


def test_an_unreachable_registry_fails_fast_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx2

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing cached
    refused = mock.patch.object(httpx2, "get", side_effect=httpx2.ConnectError("no route"))
    with (
        refused,
        pytest.raises(static.VendorError, match=r"npm pack onnxruntime-web@1\.31\.1.*--ort-web-tarball"),
    ):
        static.ort_web_tarball()
    assert not (tmp_path / "cache" / "trashnet-hf" / "npm").exists()


# --- The dry-run build ------------------------------------------------------------------------------


def build_static(run: Path, tmp_path_factory: pytest.TempPathFactory) -> publish.Built:
    """The publish dry-run on a copy of the training run ``run``: the model repo and the static Space."""
    if static.cached_tarball() is None:
        pytest.skip("onnxruntime-web is not cached: run `python -m trashnet_hf.hub.static` once (CI does)")
    out = tmp_path_factory.mktemp("static") / "out"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("checkpoints"))
    args = PublishArgs(str(out), "alice/trashnet", static_space_repo="alice/trashnet-web", dry_run=True)
    return publish.publish(args)


@pytest.fixture(scope="module")
def static_build(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> publish.Built:
    return build_static(trained_run, tmp_path_factory)


def test_dry_run_builds_the_static_space(static_build: publish.Built) -> None:
    folder = static_build.static
    assert folder == static_build.model.parent / "static"
    classes = sorted(BIN_HINTS)
    assert _files(folder) == {
        *static.PAGE_FILES, "model.onnx", "model.json", "README.md", "ort/LICENSE", "examples/CREDITS.md",
        *(f"ort/{n}" for n in static.ORT_WEB_FILES), *(f"examples/{c}.jpg" for c in classes),
    }  # fmt: skip
    for name, digest in static.ORT_WEB_FILES.items():
        assert hashlib.sha256((folder / "ort" / name).read_bytes()).hexdigest() == digest
    # The model repo carries the same checked export the page runs.
    assert (folder / "model.onnx").read_bytes() == (static_build.model / "model.onnx").read_bytes()

    classifier = Classifier.load(folder / "model.onnx", "cpu")
    info = json.loads((folder / "model.json").read_text())
    assert info["labels"] == classifier.labels
    pre = info["preprocessing"]
    cfg = classifier.pretrained_cfg
    assert [pre["image_size"], pre["crop_pct"], pre["interpolation"]] == [
        cfg["input_size"][-1], cfg["crop_pct"], cfg["interpolation"],
    ]  # fmt: skip
    assert (pre["mean"], pre["std"]) == (list(cfg["mean"]), list(cfg["std"]))
    assert info["low_confidence"] == classifier.low_confidence
    assert info["bin_hints"] == {c: BIN_HINTS.get(c, "") for c in classifier.labels}
    # The page weight the page shows: every file but model.json, as served and gzipped.
    assert set(info["files"]) == _files(folder) - {"model.json", "README.md"}
    wasm = (folder / "ort" / "ort-wasm-simd-threaded.wasm").read_bytes()
    assert info["files"]["ort/ort-wasm-simd-threaded.wasm"] == {
        "bytes": len(wasm), "gzip": len(gzip.compress(wasm, 9, mtime=0)),
    }  # fmt: skip

    card = SpaceCard.load(folder / "README.md")
    assert (card.data.sdk, card.data.app_file, card.data.models) == (
        "static",
        "index.html",
        ["alice/trashnet"],
    )
    assert "free" in card.text and "1.31.1" in card.text


def test_the_static_space_is_pushed_as_a_static_sdk_space(static_build: publish.Built) -> None:
    api = mock.MagicMock()
    args = PublishArgs(
        str(static_build.model.parents[1]), "alice/trashnet", static_space_repo="alice/web", dry_run=False
    )
    publish.push(static_build, args, api)
    calls = {c.args[0]: c.kwargs for c in api.create_repo.call_args_list}
    assert calls["alice/web"]["repo_type"] == "space" and calls["alice/web"]["space_sdk"] == "static"
    uploads = {c.kwargs["repo_id"]: c.kwargs["folder_path"] for c in api.upload_folder.call_args_list}
    assert uploads == {"alice/trashnet": static_build.model, "alice/web": static_build.static}


# --- The page, in a real browser --------------------------------------------------------------------


@contextmanager
def serve_page(folder: Path) -> Iterator[str]:
    """The built folder served as the Hub serves a static Space: plain files, no special headers."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def page_url(static_build: publish.Built) -> Iterator[str]:
    with serve_page(static_build.static) as url:
        yield url


def read_top3(page) -> list[tuple[str, float]]:
    rows = page.locator("#results [data-label]")
    return [(r.get_attribute("data-label"), float(r.get_attribute("data-score"))) for r in rows.all()]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}: apt-get install -y chromium")
def test_the_page_agrees_with_the_python_classifier_on_the_sample_photos(
    static_build: publish.Built, page_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    photos = sample_photos()
    assert len(photos) == 60
    classifier = Classifier.load(static_build.static / "model.onnx", "cpu")
    expected = [classifier.predict([open_image(p)], top_k=3)[0] for p in photos]
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("these are my notes, not a photo\n")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        with screenshot_on_failure(page, "test_the_page_agrees_with_the_python_classifier"):
            page.goto(page_url)
            expect(page.locator("body")).to_have_attribute("data-state", "ready", timeout=60_000)
            agree, worst = 0, 0.0
            for path, ranked in zip(photos, expected, strict=True):
                page.locator("#file").set_input_files(str(path))
                expect(page.locator("body")).to_have_attribute("data-state", "done", timeout=30_000)
                shown = read_top3(page)
                assert len(shown) == 3, (path.name, shown)
                agree += shown[0][0] == ranked[0]["label"]
                theirs = dict(shown)
                for r in ranked:  # the same three labels, unless two scores tie within the tolerance
                    if r["label"] in theirs:
                        worst = max(worst, abs(theirs[r["label"]] - r["score"]))
                    else:
                        worst = max(worst, abs(r["score"] - shown[-1][1]))
            assert agree >= 59, f"top-1 agrees on {agree} of 60"
            assert worst <= 0.01, f"largest probability difference {worst:.4f}"

            # A non-image gets one line, no stale result, and the page still works after it.
            page.locator("#file").set_input_files(str(not_image))
            expect(page.locator("body")).to_have_attribute("data-state", "error", timeout=30_000)
            error = page.locator("#error").inner_text().strip()
            assert "notes.jpg" in error and "\n" not in error
            assert page.locator("#results [data-label]").count() == 0
            page.locator("#file").set_input_files(str(photos[0]))
            expect(page.locator("body")).to_have_attribute("data-state", "done", timeout=30_000)
            assert read_top3(page)[0][0] == expected[0][0]["label"]
            assert page.locator("#error").inner_text().strip() == ""
            assert "MB" in page.locator("#weight").inner_text()
        browser.close()


def checkerboard() -> Image.Image:
    """A black-and-white checkerboard: nothing like a photo of one object on a white board."""
    board = np.indices((64, 64)).sum(0) // 8 % 2 * 255
    return Image.fromarray(np.stack([board] * 3, -1).astype(np.uint8))


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}: apt-get install -y chromium")
def test_the_page_says_not_waste_for_a_foreign_image_and_not_for_a_trashnet_photo(
    trashnet_run: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    # The page built for the tiny model trained on the bundled TrashNet sample (conftest's trashnet_run):
    # the synthetic run's OOD score flags every real photo, so it could not show a TrashNet photo plainly.
    built = build_static(trashnet_run, tmp_path_factory)
    board = tmp_path / "checkerboard.png"
    checkerboard().save(board)
    # The precondition, so that this checks the page and not luck: the model the page runs (ONNX, fitted
    # with its OOD data by default) flags both foreign images (a checkerboard and a real photo of an
    # astronaut) and not the TrashNet test photo that lies nearest its training photos.
    classifier = Classifier.load(built.static / "model.onnx")
    info = json.loads((built.static / "model.json").read_text())
    assert classifier.ood_threshold is not None and info["ood"] is not None
    assert info["ood"]["threshold"] == pytest.approx(classifier.ood_threshold, rel=1e-6)
    normal = typical_test_photo(trashnet_run, classifier)
    assert normal.is_relative_to(SAMPLE_DIR) and normal.parent.name in classifier.labels  # a TrashNet photo
    foreign = [board, ASTRONAUT]
    *theirs, ours = classifier.assess([open_image(p) for p in (*foreign, normal)], top_k=3)
    assert all(a.foreign for a in theirs) and not ours.foreign, (
        [a.ood_score for a in theirs], ours.ood_score, classifier.ood_threshold,
    )  # fmt: skip

    with serve_page(built.static) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        body = page.locator("body")
        with screenshot_on_failure(page, "test_the_page_says_not_waste_for_a_foreign_image"):
            page.goto(url)
            expect(body).to_have_attribute("data-state", "ready", timeout=60_000)

            for path in foreign:
                page.locator("#file").set_input_files(str(path))
                expect(body).to_have_attribute("data-state", "done", timeout=30_000)
                expect(body).to_have_attribute("data-foreign", "true")
                expect(page.locator("#foreign")).to_be_visible()
                assert FOREIGN_MESSAGE in page.locator("#foreign").inner_text()
                expect(page.locator("#closest")).to_be_visible()  # the scores, muted, as "if it were waste"
                expect(page.locator("#results")).to_have_class("results muted")
                assert page.locator("#hint").inner_text().strip() == ""  # no bin named for it

            # The TrashNet photo, after the foreign ones: a plain top 3, no message left over.
            page.locator("#file").set_input_files(str(normal))
            expect(body).to_have_attribute("data-state", "done", timeout=30_000)
            expect(body).to_have_attribute("data-foreign", "false")
            expect(page.locator("#foreign")).to_be_hidden()
            expect(page.locator("#closest")).to_be_hidden()
            expect(page.locator("#results")).not_to_have_class("results muted")
            shown = read_top3(page)
            assert [label for label, _ in shown] == [r["label"] for r in ours.ranked]
            for (_, score), r in zip(shown, ours.ranked, strict=True):
                assert abs(score - r["score"]) <= 0.01
            assert BIN_HINTS[ours.ranked[0]["label"]] in page.locator("#hint").inner_text()
            assert FOREIGN_MESSAGE not in page.locator("body").inner_text()
        browser.close()
