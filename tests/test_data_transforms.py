"""Batch transforms: the training-time eval path equals the serving path; augmentation is per sample."""

from __future__ import annotations

import numpy as np
import pytest
import timm.data
import torch

from tests.conftest import photo
from trashnet_hf.data.images import load_rgb, resize_shorter_side
from trashnet_hf.data.transforms import EvalTransform, TrainTransform
from trashnet_hf.preprocessing import Preprocessing


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_eval_path_matches_the_serving_transform(interpolation: str) -> None:
    """Stored pixels + EvalTransform must give what timm's eval transform (what pipeline() and the Space
    run, built from the model's pretrained_cfg) gives on the raw photo."""
    pre = Preprocessing(image_size=96, crop_pct=0.875, interpolation=interpolation)
    img = photo(5, (400, 300))
    chw = resize_shorter_side(load_rgb(img), pre.resize_size, pre.interpolation)
    side = pre.resize_size
    left = (chw.shape[2] - side) // 2
    stored = chw[:, :, left : left + side].permute(1, 2, 0).unsqueeze(0)  # as prepare_batch stores it
    ours = EvalTransform(pre)(stored)[0]

    serving = timm.data.create_transform(
        **timm.data.resolve_data_config(pre.to_pretrained_cfg()), is_training=False
    )
    theirs = serving(img)
    assert ours.shape == theirs.shape == (3, 96, 96)
    # One grey level is 1/255/std ~= 0.017 after normalisation; allow two (PIL vs torch rounding).
    assert (ours - theirs).abs().mean() < 0.01
    assert (ours - theirs).abs().max() < 0.05


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
