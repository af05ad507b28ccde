"""The one preprocessing definition shared by data preparation, training, the saved model and serving.

It sits at the package top, importing nothing of the project, so both sides import it: the data
preparation stack (``trashnet_hf.data``) and the serving side (``model``, prediction, the app), which
must not pull in ``datasets`` and the preparation code.

Prepared images are stored at ``resize_size`` (the shorter side timm's eval transform resizes to) and
centre-cropped square, so the eval path at training time is a centre crop plus normalisation, and the
saved model's ``pretrained_cfg`` (built from this same object) makes ``pipeline()`` and the Space apply
exactly the same maths to a raw photo.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

INTERPOLATIONS = ("bilinear", "bicubic")


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
        return asdict(self)
