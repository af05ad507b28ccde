"""The one preprocessing definition shared by data preparation, training, the saved model and serving.

It sits at the package top, importing nothing of the project, so both sides import it: the data
preparation stack (``trashnet_hf.data``) and the serving side (``model``, prediction, the app), which
must not pull in ``datasets`` and the preparation code.

Prepared images are stored at ``resize_size`` (the shorter side timm's eval transform resizes to) and
centre-cropped square, so the eval path at training time is a centre crop plus normalisation, and the
saved model's ``pretrained_cfg`` (built from this same object) makes ``pipeline()`` apply exactly the
same maths to a raw photo. ``Preprocessing.to_array`` is that maths in NumPy and PIL alone, bit for bit
(tests/test_data_transforms.py), so serving an ONNX model (the Space) needs no torch, torchvision or timm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

INTERPOLATIONS = ("bilinear", "bicubic")
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
# timm.data.IMAGENET_DEFAULT_MEAN / _STD, written out so that serving needs no timm (a test compares them).
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Image geometry and normalisation of the model input."""

    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {self.image_size}")
        if not 0.1 <= self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in [0.1, 1.0], got {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values (RGB), std above 0; got {self.mean}, {self.std}")

    @property
    def resize_size(self) -> int:
        """Shorter side before the centre crop; the same formula as timm's eval transform."""
        return math.floor(self.image_size / self.crop_pct)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the eval resize: the shorter side to ``resize_size``, the longer scaled
        and truncated, as torchvision's ``Resize(int)`` computes it (``_compute_resized_output_size``)."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """The model input of one image, float32 (3, image_size, image_size): timm's eval transform
        (torchvision's Resize, CenterCrop, ToTensor, Normalize on a PIL image) in NumPy and PIL alone.
        A non-RGB image is converted to RGB first, as pipeline()'s image loading does."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        size = self.resized_size(*image.size)
        if size != image.size:  # torchvision leaves an image of the right size untouched
            image = image.resize(size, _RESAMPLE[self.interpolation])
        # CenterCrop's offsets, rounded half to even, as torchvision's int(round(x / 2.0)).
        side = self.image_size
        left = round((image.width - side) / 2.0)
        top = round((image.height - side) / 2.0)
        pixels = np.asarray(image.crop((left, top, left + side, top + side)), dtype=np.uint8)
        # ToTensor: float32 divided by 255; Normalize: float32 subtract then divide, channel first.
        x = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return np.ascontiguousarray((x - mean) / std)

    def to_pretrained_cfg(self) -> dict[str, Any]:
        """The timm ``pretrained_cfg`` keys that drive timm's and transformers' eval transform."""
        return {
            "input_size": [3, self.image_size, self.image_size],
            "crop_pct": self.crop_pct,
            "crop_mode": "center",
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_pretrained_cfg(cls, cfg: dict[str, Any]) -> Preprocessing:
        """Read the definition back from a saved model's ``pretrained_cfg``."""
        return cls(
            image_size=int(cfg["input_size"][-1]),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            mean=tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_DEFAULT_STD)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values (JSON-ready)."""
        return asdict(self)
