"""Image bounds (pixels, shortest side, 1:20 sides) checked from the header, before any decode or resize:
in decoding (shared by training and serving), in ``predict`` (a row with its reason, the batch goes on) and
in the app, where a thin image once took gigabytes on its way to a 32 px crop."""

from __future__ import annotations

import base64
import csv
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import photo
from trashnet_hf.core.decoding import MAX_ASPECT, ImageBoundsError, load_rgb
from trashnet_hf.serving import predict
from trashnet_hf.serving.classifier import ImageError, open_image

PEAK_LIMIT = 1.5 * 2**30  # bytes
THIN = "pixels is too thin to classify (sides over 20:1); crop it around the object"
ROOT = Path(__file__).resolve().parents[1]


def png_bytes(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("size", "require_side", "reason"),
    [
        ((1, 300_000), 1, "1x300000 pixels is too thin"),
        ((300_000, 1), 1, "300000x1 pixels is too thin"),
        ((40, 40 * MAX_ASPECT + 1), 1, "too thin"),
        ((31, 64), 32, "31x64 pixels is too small"),
    ],
)
def test_bounds_come_from_the_header_before_any_decoding(
    size: tuple[int, int], require_side: int, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(png_bytes(size))

    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("decoded an image its header already rules out")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "resize", no_decoding)
    with pytest.raises(ImageBoundsError, match=reason):
        load_rgb(path, require_side=require_side)
    with pytest.raises(ImageError) as err:
        open_image(path, require_side=require_side)
    assert str(err.value).startswith(f"{path}: ") and reason in str(err.value) and "\n" not in str(err.value)


def test_pixel_count_is_bounded_for_files_and_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    big = Image.new("L", (1_200, 1_000))
    with pytest.raises(ImageBoundsError, match="1200x1000 pixels: too many pixels to decode safely"):
        load_rgb(big)  # an image already in memory: still never resized
    big.save(tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"big\.png: too many pixels to decode safely"):
        open_image(tmp_path / "big.png")  # a file: PIL's own guard, on the header


@pytest.mark.parametrize(("size", "require_side"), [((40, 40 * MAX_ASPECT), 1), ((32, 32), 32), ((1, 1), 1)])
def test_images_within_the_bounds_are_decoded(size: tuple[int, int], require_side: int) -> None:
    assert load_rgb(png_bytes(size), require_side=require_side).size == size


def test_predict_reports_a_thin_image_and_goes_on(trained_run: Path, tmp_path: Path) -> None:
    thin, good = tmp_path / "strip.png", tmp_path / "good.jpg"
    thin.write_bytes(png_bytes((20, 2_000)))
    photo(3).save(good)
    out = tmp_path / "out.csv"
    assert (
        predict.main([str(thin), str(good), "--model", str(trained_run / "model"), "--output", str(out)]) == 0
    )
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(thin), str(good)]
    assert rows[0]["error"] == f"20x2000 {THIN}"
    assert not rows[0]["label_1"] and rows[1]["error"] == "" and rows[1]["label_1"]


def peak_of_child(code: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``code`` in a fresh python, itself started by a wrapper that reports the peak resident memory of
    its one child (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, in KiB on Linux): that child's peak alone."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    wrapper = (
        "import resource, subprocess, sys\n"
        f"proc = subprocess.run([sys.executable, {str(script)!r}], capture_output=True, text=True)\n"
        "sys.stdout.write(proc.stdout)\nsys.stderr.write(proc.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(proc.returncode)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # this checkout's trashnet_hf
    done = subprocess.run(
        [sys.executable, "-c", wrapper], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    *lines, peak = done.stdout.strip().splitlines()
    done.stdout = "\n".join(lines)
    return done, int(peak) * 1024


@pytest.mark.slow
def test_predict_on_a_1x300000_png_stays_small(trained_run: Path, tmp_path: Path) -> None:
    """Issue 16, case 6: a 1x300,000 PNG of a few hundred bytes once took 2.7 GB here (7.4 GB with a
    224-px model) in the resize to the model's short side."""
    thin = tmp_path / "thin.png"
    thin.write_bytes(png_bytes((1, 300_000)))
    photo(3).save(tmp_path / "good.jpg")
    code = f"""
        import sys
        from trashnet_hf.serving import predict
        sys.exit(predict.main([{str(thin)!r}, {str(tmp_path / "good.jpg")!r}, "--model",
                               {str(trained_run / "model")!r}, "--num-threads", "1"]))
    """
    done, peak = peak_of_child(code, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert peak < PEAK_LIMIT, f"peak {peak / 2**30:.2f} GB"
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows[0]["error"] == f"1x300000 {THIN}"
    assert rows[1]["error"] == "" and rows[1]["label_1"]


@pytest.mark.slow
def test_app_on_a_1x300000_data_url_stays_small(trained_run: Path, tmp_path: Path) -> None:
    """The app's decode path (a data: URL, as the raw API takes it) on the same image, in a fresh process."""
    url = "data:image/png;base64," + base64.b64encode(png_bytes((1, 300_000))).decode()
    code = f"""
        import gradio as gr
        import torch
        from trashnet_hf.serving.app import Demo
        from trashnet_hf.serving.feedback import FeedbackStore
        from trashnet_hf.serving.classifier import Classifier

        torch.set_num_threads(1)
        classifier = Classifier.load({str(trained_run / "model")!r}, "cpu")
        demo = Demo(classifier, "test-model", FeedbackStore({str(tmp_path / "fb")!r}, classifier.labels))
        try:
            demo.classify({{"path": None, "url": {url!r}}})
        except gr.Error as err:
            print(err.message)
        else:
            print("classified")
    """
    done, peak = peak_of_child(code, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert peak < PEAK_LIMIT, f"peak {peak / 2**30:.2f} GB"
    assert done.stdout.strip() == (
        "pasted image: 1x300000 pixels is too small to recognise anything; send an image at least 32 pixels "
        "on each side"
    )
