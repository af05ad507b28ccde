"""On real TrashNet photos, what training evaluates equals what ``pipeline()`` feeds the model, so the
published test numbers are what users get."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TimmWrapperImageProcessor
from transformers.image_utils import load_image

from trashnet_hf.core.preprocessing import Preprocessing
from trashnet_hf.data.images import prepare_batch
from trashnet_hf.data.loader import decode_pixels
from trashnet_hf.data.transforms import EvalTransform

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


@pytest.mark.parametrize(("image_size", "crop_pct"), [(160, 0.875), (224, 0.875), (224, 0.95), (192, 0.875)])
def test_eval_path_equals_pipeline_preprocessing_on_real_photos(
    real_data: Path, image_size: int, crop_pct: float
) -> None:
    """100 files spread over the classes: the stored square after EvalTransform against transformers'
    load_image + TimmWrapperImageProcessor (timm's eval transform from the model's pretrained_cfg) on the
    original file. Measured on 200 files at 160 and 224 (crop_pct 0.875 and 0.95): identical pixels,
    float rounding only (1.4e-5 of a grey level at most)."""
    files = sorted(real_data.glob("*/*.jpg"))[::25][:100]
    pre = Preprocessing(image_size=image_size, crop_pct=crop_pct)
    batch = {"image": [{"path": str(f), "bytes": None} for f in files]}
    # As prepare_data calls it.
    rows = prepare_batch(
        batch, size=pre.resize_size, crop_size=pre.image_size, interpolation=pre.interpolation, hash_size=16
    )
    assert not any(rows["error"])
    ours = EvalTransform(pre)(torch.from_numpy(np.stack([decode_pixels(p) for p in rows["pixels"]])))

    processor = TimmWrapperImageProcessor(pretrained_cfg=pre.to_pretrained_cfg())
    theirs = processor(images=[load_image(str(f)) for f in files], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (len(files), 3, image_size, image_size)
    levels = (ours - theirs).abs() * torch.tensor(pre.std).view(1, 3, 1, 1) * 255
    assert levels.max() < 1e-3
