"""Batch transforms: the training-time eval path equals the serving path; augmentation is per sample."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from transformers import TimmWrapperImageProcessor
from transformers.image_utils import load_image

from tests.conftest import jpeg_bytes, photo
from trashnet_hf.core.preprocessing import Preprocessing
from trashnet_hf.data.images import prepare_batch, stored_square
from trashnet_hf.data.loader import decode_pixels
from trashnet_hf.data.transforms import EvalTransform, TrainTransform


def _grey_levels(ours: torch.Tensor, theirs: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """|ours - theirs| back in uint8 grey levels (one level is 1 / 255 / std after normalisation)."""
    return (ours - theirs).abs() * torch.tensor(pre.std).view(1, 3, 1, 1) * 255


def _eval_path_and_serving(data: bytes, pre: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """What training evaluates (the stored square after EvalTransform) and what pipeline() feeds the model
    (transformers' load_image, then the TimmWrapper image processor built from the model's pretrained_cfg,
    i.e. timm's eval transform) for one encoded image."""
    rows = prepare_batch(
        {"image": [{"path": "x.jpg", "bytes": data}]},
        size=pre.resize_size,
        interpolation=pre.interpolation,
        hash_size=16,
    )
    stored = torch.from_numpy(decode_pixels(rows["pixels"][0]).copy()).unsqueeze(0)
    processor = TimmWrapperImageProcessor(pretrained_cfg=pre.to_pretrained_cfg())
    theirs = processor(images=load_image(Image.open(io.BytesIO(data))), return_tensors="pt")["pixel_values"]
    return EvalTransform(pre)(stored), theirs


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_eval_path_matches_the_serving_transform(interpolation: str) -> None:
    """A photo decoded in full (no JPEG draft: under twice the stored size) gives pipeline()'s pixels
    exactly: the same PIL resize, the same centre crop; only the normalisation's float rounding is left."""
    pre = Preprocessing(image_size=96, crop_pct=0.875, interpolation=interpolation)
    ours, theirs = _eval_path_and_serving(jpeg_bytes(photo(5, (400, 300))), pre)
    assert ours.shape == theirs.shape == (1, 3, 96, 96)
    assert _grey_levels(ours, theirs, pre).max() < 1e-3


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(1600, 1200), (1200, 1600)])
def test_draft_decoded_photos_are_within_a_few_levels(interpolation: str, size: tuple[int, int]) -> None:
    """A large JPEG is draft-decoded to a frame still at least twice the stored size: cheaper, and within
    a few grey levels of pipeline()'s full decode (here max 2, mean 0.2-0.3; upscaled TrashNet photos at
    4032x3024: max 7, mean 0.26)."""
    pre = Preprocessing(image_size=96, crop_pct=0.875, interpolation=interpolation)
    ours, theirs = _eval_path_and_serving(jpeg_bytes(photo(5, size)), pre)
    levels = _grey_levels(ours, theirs, pre)
    assert levels.max() < 3.5 and levels.mean() < 0.4


@pytest.mark.parametrize(("image_size", "crop_pct"), [(96, 0.875), (192, 0.875), (224, 0.95), (64, 0.9)])
@pytest.mark.parametrize("size", [(400, 300), (300, 400), (333, 301)])
def test_stored_square_with_crop_size_holds_the_serving_crop(
    image_size: int, crop_pct: float, size: tuple[int, int]
) -> None:
    """Placed for ``crop_size``, the stored square's centre crop (torchvision's rounding) is the serving
    path's Resize + CenterCrop, pixel for pixel, at geometries where two plain centre crops in a row
    land a pixel off (192 px at 0.875, 224 px at 0.95 for 4:3 photos)."""
    pre = Preprocessing(image_size=image_size, crop_pct=crop_pct)
    img = photo(7, size)
    square = stored_square(img, pre.resize_size, pre.interpolation, crop_size=image_size)
    ours = TF.center_crop(torch.from_numpy(square.copy()).permute(2, 0, 1), [image_size, image_size])
    resize, crop = TimmWrapperImageProcessor(
        pretrained_cfg=pre.to_pretrained_cfg()
    ).val_transforms.transforms[:2]
    assert type(resize).__name__ == "Resize" and type(crop).__name__ == "CenterCrop"
    theirs = torch.from_numpy(np.array(crop(resize(img)))).permute(2, 0, 1)
    assert torch.equal(ours, theirs)


def test_train_transform_is_per_sample_and_channels_last() -> None:
    pre = Preprocessing(image_size=32, crop_pct=0.875)
    one = torch.from_numpy(np.array(photo(3, (36, 36)))).unsqueeze(0)
    batch = one.repeat(8, 1, 1, 1)
    torch.manual_seed(0)
    out = TrainTransform(pre)(batch)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    # Eight copies of one image come out as eight different crops.
    flat = out.flatten(1)
    assert torch.cdist(flat, flat).triu(1)[torch.triu(torch.ones(8, 8), 1).bool()].min() > 1.0
    torch.manual_seed(0)
    assert torch.equal(TrainTransform(pre)(batch), out)  # seeded: reproducible


def test_train_transform_without_augmentation_is_a_full_view() -> None:
    """scale=(1,1), ratio 1, no flip, no jitter: a plain resize of the whole stored square."""
    pre = Preprocessing(image_size=32, crop_pct=1.0)
    img = torch.from_numpy(np.array(photo(4, (32, 32)))).unsqueeze(0)
    aug = TrainTransform(pre, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, jitter=0.0)
    assert torch.allclose(aug(img), EvalTransform(pre)(img), atol=1e-5)
