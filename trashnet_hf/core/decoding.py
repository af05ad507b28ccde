"""Decoding any image file to 8-bit RGB: the one definition training's data preparation and serving share.

Imports nothing of the project and nothing of the data stack (PIL and numpy only), so the app, the batch
CLI and a Space decode exactly as training does without loading ``datasets``.
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

# Longer side over shorter side, at most. Photos are 4:3 or 16:9 (a phone panorama about 4:1); a thinner
# image holds nothing to classify, and resizing its short side up to the model's input multiplies the long
# one: a 1,247-byte 1x300,000 PNG becomes 224x67,200,000 pixels (7.4 GB) on the way to a 224 px crop.
MAX_ASPECT = 20


class ImageBoundsError(ValueError):
    """The header alone shows an image that cannot be decoded safely or used (too many pixels, a side too
    short, too thin). A ValueError, so every caller that catches ``DECODE_ERRORS`` reports it too."""


# What a bad file can raise while being opened and decoded. PIL reports unreadable, truncated and
# non-image files as OSError (UnidentifiedImageError is one), broken chunks as SyntaxError/ValueError,
# and the decompression-bomb guard as DecompressionBombError (or its warning, turned into an error here).
DECODE_ERRORS = (
    ImageBoundsError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    zlib.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


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


def check_bounds(size: tuple[int, int], require_side: int = 1) -> None:
    """Raise ImageBoundsError unless an image of ``size`` (width, height) is safe to decode and resize:
    at most ``Image.MAX_IMAGE_PIXELS`` pixels (PIL's own bomb limit), each side at least ``require_side``
    pixels, the longer side at most ``MAX_ASPECT`` times the shorter. Needs the header only."""
    w, h = size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise ImageBoundsError(f"{w}x{h} pixels: too many pixels to decode safely (over {limit:,})")
    if min(w, h) < max(require_side, 1):
        raise ImageBoundsError(
            f"{w}x{h} pixels is too small to recognise anything; send an image at least {require_side} "
            "pixels on each side"
        )
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageBoundsError(
            f"{w}x{h} pixels is too thin to classify (sides over {MAX_ASPECT}:1); crop it around the object"
        )


def open_lazy(source: str | Path | bytes | BinaryIO | Image.Image, require_side: int = 1) -> Image.Image:
    """Open lazily (the header only: size and format are known, nothing is decoded yet) and check the size
    against ``check_bounds`` before anything is decoded or resized."""
    if isinstance(source, Image.Image):
        check_bounds(source.size, require_side)
        return source
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    try:
        check_bounds(img.size, require_side)
    except ImageBoundsError:
        img.close()  # opened here: do not leave the file handle to the garbage collector
        raise
    return img


def decode(img: Image.Image, min_side: int | None) -> Image.Image:
    """Decode an image opened by ``open_lazy`` (see ``load_rgb``)."""
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


def load_rgb(
    source: str | Path | bytes | BinaryIO | Image.Image, min_side: int | None = None, require_side: int = 1
) -> Image.Image:
    """Open an image as RGB; with ``min_side``, JPEGs are decoded at the smallest DCT scale that keeps the
    shorter side at least ``min_side`` (draft mode), so a 4032x3024 photo is never decoded full size.

    Raises one of ``DECODE_ERRORS`` for a file that is not a readable image: ImageBoundsError, from the
    header alone, for one outside ``check_bounds`` (``require_side``: the shortest side accepted); PIL's
    decompression-bomb guard stays on and its warning level is raised to an error.
    """
    return decode(open_lazy(source, require_side), min_side)
