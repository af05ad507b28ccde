"""Decoding any image file to RGB, cheaply, and the batched ``Dataset.map`` step built on it.

``load_rgb`` is shared with serving (the Space), so a photo is decoded the same way at training and at
inference time: EXIF orientation honoured, every mode made RGB, transparency composited on white.
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import imagehash
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import ExifTags, Image, ImageOps

# What a bad file can raise while being opened and decoded. PIL reports unreadable, truncated and
# non-image files as OSError (UnidentifiedImageError is one), broken chunks as SyntaxError/ValueError,
# and the decompression-bomb guard as DecompressionBombError (or its warning, turned into an error here).
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    zlib.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)

_INTERPOLATION = {"bilinear": TF.InterpolationMode.BILINEAR, "bicubic": TF.InterpolationMode.BICUBIC}


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without the usual pitfalls (black alpha, clipped 16-bit)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit (and 32-bit) grayscale: PIL's convert("L") clips at 255, turning most pixels white;
        # scale the 16-bit range down instead.
        arr = np.asarray(img, dtype=np.float32)
        scale = 257.0 if arr.max(initial=0) > 255 else 1.0
        img = Image.fromarray(np.clip(arr / scale + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(source: str | Path | bytes | BinaryIO | Image.Image, min_side: int | None = None) -> Image.Image:
    """Open an image as RGB; with ``min_side``, JPEGs are decoded at the smallest DCT scale that keeps the
    shorter side at least ``min_side`` (draft mode), so a 4032x3024 photo is never decoded full size.

    Raises one of ``DECODE_ERRORS`` for a file that is not a readable image; PIL's decompression-bomb guard
    stays on and its warning level is raised to an error.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if isinstance(source, Image.Image):
            img = source
        else:
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if min_side is not None and img.format == "JPEG":
            scale = min_side / min(img.size)
            if scale < 1.0:
                img.draft(None, (math.ceil(img.size[0] * scale), math.ceil(img.size[1] * scale)))
        img.load()
        if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


def resize_shorter_side(img: Image.Image, size: int, interpolation: str) -> torch.Tensor:
    """Resize so the shorter side is ``size``; returns a uint8 CHW tensor.

    torchvision's antialiased uint8 kernels are several times faster than PIL's and agree with PIL to
    within one grey level (tests/test_data_transforms.py checks it against the serving path).
    """
    chw = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    return TF.resize(chw, size, interpolation=_INTERPOLATION[interpolation], antialias=True)


def perceptual_hash(img: Image.Image, hash_size: int) -> str:
    """imagehash's DCT perceptual hash, as a hex string.

    imagehash shrinks the image to (4 * hash_size)^2 grey pixels with a full Lanczos pass over the photo;
    doing that shrink here with ``reducing_gap`` (a box reduce first) is 4x faster and hashes the same
    photo at two resolutions just as closely.
    """
    side = 4 * hash_size
    small = img.convert("L").resize((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return str(imagehash.phash(small, hash_size=hash_size))


def _prepare_one(image: dict[str, Any], size: int, interpolation: str, hash_size: int) -> dict[str, Any]:
    path = image.get("path") or "<bytes>"
    try:
        img = load_rgb(image["bytes"] if image.get("bytes") else path, min_side=size)
        chw = resize_shorter_side(img, size, interpolation)
        phash = perceptual_hash(img, hash_size)
    except DECODE_ERRORS as err:
        return {
            "path": path,
            "pixels": bytes(size * size * 3),
            "phash": "",
            "error": f"{type(err).__name__}: {err}",
        }
    pixels = TF.center_crop(chw, [size, size]).permute(1, 2, 0).numpy().tobytes()
    return {"path": path, "pixels": pixels, "phash": phash, "error": None}


def prepare_batch(
    batch: dict[str, list[Any]], *, size: int, interpolation: str, hash_size: int, threads: int = 1
) -> dict[str, list[Any]]:
    """``Dataset.map`` step: decode, hash the decoded frame (so grouping does not depend on ``size``),
    resize to ``size`` (shorter side) and store the centre ``size`` x ``size`` square as raw uint8 HWC
    bytes (see ``trashnet_hf.data.loader`` for why not ``Array3D``).
    A file that cannot be decoded keeps its row, with ``error`` set and blank pixels, so it can be
    reported and filtered out afterwards.

    ``threads`` images are processed at once: JPEG decoding, PIL and torch resizing release the GIL, so
    threads use the cores without the start-up and shard-merging cost of worker processes.
    """
    # One torch thread per image: an image is too small to split, and the images already run in parallel.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        work = partial(_prepare_one, size=size, interpolation=interpolation, hash_size=hash_size)
        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                rows = list(pool.map(work, batch["image"]))
        else:
            rows = [work(image) for image in batch["image"]]
    finally:
        torch.set_num_threads(torch_threads)
    return {key: [row[key] for row in rows] for key in ("path", "pixels", "phash", "error")}
