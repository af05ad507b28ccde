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
import torchvision.transforms.functional as TF
from PIL import ExifTags, Image, ImageOps
from torchvision.transforms import InterpolationMode

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

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}

# The perceptual hash is taken on a frame whose size depends on the file alone, never on --image-size: a
# JPEG is draft-decoded at the smallest DCT scale keeping its shorter side at least this long. Hashes of
# one photo decoded at two DCT scales differ by a few bits, enough to move pairs near the threshold in or
# out of a group and re-deal their class. 256 px is 4x the 64 px grey thumbnail phash reads at hash_size 16.
HASH_MIN_SIDE = 256


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


def _open(source: str | Path | bytes | BinaryIO | Image.Image) -> Image.Image:
    """Open lazily (the header only: size and format are known, nothing is decoded yet)."""
    if isinstance(source, Image.Image):
        return source
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def _decode(img: Image.Image, min_side: int | None) -> Image.Image:
    """Decode an opened image (see ``load_rgb``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if min_side is not None and img.format == "JPEG":
            scale = min_side / min(img.size)
            if scale < 1.0:
                img.draft(None, (math.ceil(img.size[0] * scale), math.ceil(img.size[1] * scale)))
        img.load()
        if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


def load_rgb(source: str | Path | bytes | BinaryIO | Image.Image, min_side: int | None = None) -> Image.Image:
    """Open an image as RGB; with ``min_side``, JPEGs are decoded at the smallest DCT scale that keeps the
    shorter side at least ``min_side`` (draft mode), so a 4032x3024 photo is never decoded full size.

    Raises one of ``DECODE_ERRORS`` for a file that is not a readable image; PIL's decompression-bomb guard
    stays on and its warning level is raised to an error.
    """
    return _decode(_open(source), min_side)


def resize_shorter_side(img: Image.Image, size: int, interpolation: str) -> Image.Image:
    """Resize so the shorter side is ``size``, exactly as timm's eval transform (so ``pipeline()``) does:
    torchvision's ``Resize(size)`` on the PIL image, i.e. the longer side ``int(size * long / short)`` and
    PIL's own antialiased filter. (torchvision's uint8 tensor kernels are faster but differ by a grey level
    here and there, enough to flip a borderline prediction.)"""
    return TF.resize(img, [size], interpolation=_INTERPOLATION[interpolation])


def decode_frames(source: str | Path | bytes, size: int) -> tuple[Image.Image, Image.Image]:
    """The frame to hash (draft-decoded to ``HASH_MIN_SIDE``, whatever ``size`` is) and the frame to
    resize to ``size``: draft-decoded only as far as keeps it at least ``2 * size``, where resizing it
    gives what resizing the full decode gives to within a few grey levels (smaller files: exactly).
    One decode serves both when the hash frame is that large already, or is the whole image anyway.
    """
    img = _open(source)
    full_side = min(img.size)
    canonical = _decode(img, HASH_MIN_SIDE)
    if min(canonical.size) >= min(2 * size, full_side):
        return canonical, canonical
    return canonical, load_rgb(source, min_side=2 * size)


def perceptual_hash(img: Image.Image, hash_size: int) -> str:
    """imagehash's DCT perceptual hash, as a hex string.

    imagehash shrinks the image to (4 * hash_size)^2 grey pixels with a full Lanczos pass over the photo;
    doing that shrink here with ``reducing_gap`` (a box reduce first) is 4x faster and hashes the same
    photo at two resolutions just as closely.
    """
    side = 4 * hash_size
    small = img.convert("L").resize((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return str(imagehash.phash(small, hash_size=hash_size))


def stored_square(
    img: Image.Image, size: int, interpolation: str, crop_size: int | None = None
) -> np.ndarray:
    """The ``size`` x ``size`` uint8 HWC square an image is stored as: resized as timm's eval transform
    resizes it, then cropped at the centre with torchvision's ``CenterCrop`` rounding of the offset.

    With ``crop_size`` (the model input side), the square is placed so that its own centre ``crop_size``
    crop, rounded the same way, is exactly the serving path's ``CenterCrop(crop_size)`` of the resized
    photo: two rounded centre crops in a row can land a pixel off it (224 px at crop_pct 0.95 does).
    """
    resized = resize_shorter_side(img, size, interpolation)
    if crop_size is None:
        return np.asarray(TF.center_crop(resized, [size, size]), dtype=np.uint8)
    w, h = resized.size
    inner = round((size - crop_size) / 2)  # Python's round is torchvision's: half to even
    top, left = round((h - crop_size) / 2) - inner, round((w - crop_size) / 2) - inner
    return np.asarray(TF.crop(resized, top, left, size, size), dtype=np.uint8)


def _prepare_one(
    image: dict[str, Any], size: int, interpolation: str, hash_size: int, crop_size: int | None
) -> dict[str, Any]:
    path = image.get("path") or "<bytes>"
    try:
        canonical, frame = decode_frames(image["bytes"] if image.get("bytes") else path, size)
        phash = perceptual_hash(canonical, hash_size)
        square = stored_square(frame, size, interpolation, crop_size)
    except DECODE_ERRORS as err:
        return {
            "path": path,
            "pixels": bytes(size * size * 3),
            "phash": "",
            "error": f"{type(err).__name__}: {err}",
        }
    return {"path": path, "pixels": square.tobytes(), "phash": phash, "error": None}


def prepare_batch(
    batch: dict[str, list[Any]],
    *,
    size: int,
    interpolation: str,
    hash_size: int,
    crop_size: int | None = None,
    threads: int = 1,
) -> dict[str, list[Any]]:
    """``Dataset.map`` step: decode, hash a frame that does not depend on ``size`` (``decode_frames``),
    resize to ``size`` (shorter side) as the serving path does and store the ``size`` x ``size`` square
    (``stored_square``) as raw uint8 HWC bytes (see ``trashnet_hf.data.loader`` for why not ``Array3D``).
    A file that cannot be decoded keeps its row, with ``error`` set and blank pixels, so it can be
    reported and filtered out afterwards.

    ``threads`` images are processed at once: JPEG decoding and PIL resizing release the GIL, so threads
    use the cores without the start-up and shard-merging cost of worker processes.
    """
    work = partial(
        _prepare_one, size=size, interpolation=interpolation, hash_size=hash_size, crop_size=crop_size
    )
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            rows = list(pool.map(work, batch["image"]))
    else:
        rows = [work(image) for image in batch["image"]]
    return {key: [row[key] for row in rows] for key in ("path", "pixels", "phash", "error")}
