"""Decoding: every awkward kind of file is either made RGB correctly or reported with its reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import photo
from trashnet_hf.core.config import DataConfig
from trashnet_hf.data import DataError, prepare_data
from trashnet_hf.data.images import DECODE_ERRORS, decode_frames, load_rgb
from trashnet_hf.data.loader import decode_pixels


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge canvas: PIL's decompression-bomb guard trips on the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 30))  # opaque blue left half
    rgba.save(tmp_path / "a.png")
    arr = np.asarray(load_rgb(tmp_path / "a.png"))
    assert arr.shape == (30, 40, 3)
    assert (arr[:, :20] == [0, 0, 255]).all()
    assert (arr[:, 20:] == [255, 255, 255]).all()  # convert("RGB") would give black or red here


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    src = photo(1, (48, 32))
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    src.convert(mode).save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (48, 32)
    expected = np.asarray(src.convert(mode).convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(out, dtype=np.int16) - expected).mean() < 8


def test_cmyk_jpeg_keeps_its_colours(tmp_path: Path) -> None:
    src = photo(2, (48, 32))
    src.convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    diff = np.abs(np.asarray(load_rgb(tmp_path / "c.jpg"), dtype=np.int16) - np.asarray(src, dtype=np.int16))
    assert diff.mean() < 10  # an inverted or channel-swapped CMYK decode is off by ~100


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.linspace(0, 65535, 64 * 16).reshape(16, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    arr = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert arr.shape == (16, 64, 3)
    assert arr[0, 0, 0] == 0 and arr[-1, -1, 0] == 255
    assert 120 < arr[:, 32, 0].mean() < 136  # mid-grey stays mid-grey, not clipped to white


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 20), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 10, 20))  # black band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = np.asarray(load_rgb(tmp_path / "r.jpg"))
    assert out.shape == (60, 20, 3)  # portrait after rotation
    assert out[:10].mean() < 60 and out[-10:].mean() > 200  # the band is now at the top


def test_jpeg_draft_decodes_small_but_never_below_min_side(tmp_path: Path) -> None:
    photo(3, (1600, 1200)).save(tmp_path / "big.jpg", quality=90)
    out = load_rgb(tmp_path / "big.jpg", min_side=140)
    assert min(out.size) >= 140
    assert out.size == (200, 150)  # DCT scale 1/8, not a full 1600x1200 decode


def test_hash_frame_ignores_the_size_and_the_pixel_frame_stays_twice_it(tmp_path: Path) -> None:
    photo(3, (1600, 1200)).save(tmp_path / "big.jpg", quality=90)
    for size, pixel_frame in ((32, (400, 300)), (109, (400, 300)), (182, (800, 600)), (256, (800, 600))):
        canonical, frame = decode_frames(tmp_path / "big.jpg", size)
        assert canonical.size == (400, 300)  # DCT scale 1/4, the smallest with a side >= 256, at every size
        assert frame.size == pixel_frame and min(frame.size) >= 2 * size
        assert (frame is canonical) == (frame.size == canonical.size)  # decoded once when they coincide
    photo(4, (400, 300)).save(tmp_path / "small.jpg", quality=90)
    canonical, frame = decode_frames(tmp_path / "small.jpg", 256)
    assert frame is canonical and frame.size == (400, 300)  # nothing larger to decode: one full decode


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("corrupt.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "UnidentifiedImageError"),
        ("empty.jpg", b"", "UnidentifiedImageError"),
        ("text.jpg", b"this is not an image\n", "UnidentifiedImageError"),
        ("bomb.png", _png_header_only(20000, 20000), "DecompressionBomb"),
    ],
)
def test_bad_files_raise_decode_errors(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DECODE_ERRORS) as info:
        load_rgb(tmp_path / name)
    assert reason in type(info.value).__name__


def test_truncated_jpeg_is_an_error(tmp_path: Path) -> None:
    data = io.BytesIO()
    photo(4, (256, 192)).save(data, "JPEG", quality=90)
    (tmp_path / "trunc.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with pytest.raises(OSError, match="truncated"):
        load_rgb(tmp_path / "trunc.jpg")


def _bad_corpus(root: Path) -> dict[str, str]:
    """An ImageFolder with good images of three classes plus every kind of awkward file; returns the
    awkward files that must be reported, by name, with a word their reason must contain."""
    for c, cls in enumerate(("a", "b", "c")):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            photo(100 * c + i).save(root / cls / f"ok{i}.jpg", quality=90)
    a = root / "a"
    (a / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    buf = io.BytesIO()
    photo(50, (256, 192)).save(buf, "JPEG", quality=90)
    (a / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (a / "empty.jpg").write_bytes(b"")
    (a / "text.jpg").write_text("not an image")
    (a / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    Image.new("RGB", (10, 300), "white").save(a / "strip.png")  # sides 1:30: refused from the header
    # Awkward but valid: these must be kept.
    photo(60).convert("RGBA").save(a / "rgba.png")
    photo(61).convert("L").save(a / "gray.jpg")
    photo(62).convert("CMYK").save(a / "cmyk.jpg")
    Image.fromarray((np.arange(96 * 128).reshape(96, 128) * 5).astype(np.uint16)).save(a / "g16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(63).save(a / "rotated.jpg", exif=exif, quality=95)
    photo(63).transpose(Image.Transpose.ROTATE_270).save(a / "upright.jpg", quality=95)
    return {
        "corrupt.jpg": "cannot identify",
        "truncated.jpg": "truncated",
        "empty.jpg": "cannot identify",
        "text.jpg": "cannot identify",
        "bomb.png": "DecompressionBomb",
        "strip.png": "ImageBoundsError: 10x300 pixels is too thin",
    }


def test_bad_corpus_is_reported_and_the_rest_kept(tmp_path: Path, cache_dir: str) -> None:
    expected_bad = _bad_corpus(tmp_path / "data")
    cfg = DataConfig(
        data_dir=str(tmp_path / "data"),
        output_dir=str(tmp_path / "out"),
        image_size=32,
        num_proc=1,
        max_bad_fraction=0.5,
        cache_dir=cache_dir,
    )
    data = prepare_data(cfg)
    report = data.report
    assert report["num_images"] == 18 + 6 + 6
    assert report["num_bad"] == 6
    reasons = {Path(b["path"]).name: b["reason"] for b in report["bad_files"]}
    assert set(reasons) == set(expected_bad)
    for name, word in expected_bad.items():
        assert word in reasons[name], (name, reasons[name])
    kept = {Path(r["path"]).name for r in data.manifest}
    assert {"rgba.png", "gray.jpg", "cmyk.jpg", "g16.png", "rotated.jpg"} <= kept
    # The EXIF-rotated photo is stored as its hand-rotated twin is (and grouped with it).
    rows = {Path(r["path"]).name: r for s in ("train", "val", "test") for r in data.splits[s]}
    rotated = decode_pixels(rows["rotated.jpg"]["pixels"]).astype(np.int16)
    upright = decode_pixels(rows["upright.jpg"]["pixels"]).astype(np.int16)
    assert rotated.shape == (36, 36, 3)
    assert np.abs(rotated - upright).mean() < 4
    groups = {Path(r["path"]).name: r["group"] for r in data.manifest}
    assert groups["rotated.jpg"] == groups["upright.jpg"]


def test_too_many_bad_files_stops_with_a_clear_error(tmp_path: Path, cache_dir: str) -> None:
    _bad_corpus(tmp_path / "data")
    cfg = DataConfig(
        data_dir=str(tmp_path / "data"),
        output_dir=str(tmp_path / "out"),
        image_size=32,
        num_proc=1,
        max_bad_fraction=0.1,
        cache_dir=cache_dir,
    )
    with pytest.raises(DataError, match=r"6 of 30 files .*--max-bad-fraction 0\.1"):
        prepare_data(cfg)
    # Nothing already done is lost: the report of what was found is on disk.
    assert (tmp_path / "out" / "data_report.json").is_file()
