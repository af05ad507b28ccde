"""The batched ``Dataset.map`` step: decode (``trashnet_hf.core.decoding``, shared with serving), resize as
serving resizes, hash.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from trashnet_hf.core.decoding import DECODE_ERRORS, load_rgb
from trashnet_hf.core.decoding import decode as _decode
from trashnet_hf.core.decoding import open_lazy as _open

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}

# The perceptual hash is taken on a frame whose size depends on the file alone, never on --image-size: a
# JPEG is draft-decoded at the smallest DCT scale keeping its shorter side at least this long. Hashes of
# one photo decoded at two DCT scales differ by a few bits, enough to move pairs near the threshold in or
# out of a group and re-deal their class. 256 px is 4x the 64 px grey thumbnail phash reads at hash_size 16.
HASH_MIN_SIDE = 256


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


# The path of an image stored as bytes alone (no file behind it), in the prepared rows and the manifest.
NO_PATH = "<bytes>"


def _prepare_one(
    image: dict[str, Any], size: int, interpolation: str, hash_size: int, crop_size: int | None
) -> dict[str, Any]:
    path = image.get("path") or NO_PATH
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
