"""``Preprocessing.to_array`` (NumPy and PIL, what the ONNX Space runs) equals, bit for bit, the transform
pipeline() applies: ``TimmWrapperImageProcessor(pretrained_cfg=...).val_transforms`` (timm, torchvision)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trashnet_hf.core.preprocessing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Preprocessing

# (width, height): odd sides whose crop offset is x.5, portrait and landscape, upsampling, tiny, thin, and
# sides already at the resize size (torchvision then skips the resize).
SIZES = [
    (32, 32), (33, 47), (47, 33), (97, 211), (211, 97), (128, 96), (96, 128), (161, 161), (171, 301),
    (255, 181), (384, 512), (512, 384), (640, 479), (1001, 767), (182, 182), (168, 250), (256, 341),
    (301, 15),
]  # fmt: skip
CONFIGS = [
    Preprocessing(image_size=s, crop_pct=c, interpolation=i)
    for s in (160, 224)
    for c in (0.875, 0.95, 1.0)
    for i in ("bicubic", "bilinear")
]


def _image(width: int, height: int, seed: int) -> Image.Image:
    # Noise over a gradient: every resample tap and every rounding of the float maths is exercised.
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    noise = rng.integers(-60, 60, size=(height, width, 3))
    return Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("pre", CONFIGS, ids=lambda p: f"{p.image_size}-{p.crop_pct}-{p.interpolation}")
def test_to_array_is_the_pipelines_eval_transform_bit_for_bit(pre: Preprocessing) -> None:
    from transformers import TimmWrapperImageProcessor

    theirs = TimmWrapperImageProcessor(pretrained_cfg=pre.to_pretrained_cfg()).val_transforms
    for k, (width, height) in enumerate(SIZES):
        image = _image(width, height, seed=k)
        ours = pre.to_array(image)
        expected = theirs(image).numpy()
        assert ours.dtype == np.float32 and ours.shape == expected.shape == (
            3,
            pre.image_size,
            pre.image_size,
        )
        assert np.abs(ours - expected).max() == 0, (width, height)


def test_crop_offsets_round_like_torchvision() -> None:
    # 33x47 at 32 px, crop_pct 1: resized to 32x45, the vertical offset (45 - 32) / 2 = 6.5 rounds to 6.
    from torchvision.transforms import CenterCrop, Resize

    pre = Preprocessing(image_size=32, crop_pct=1.0, interpolation="bilinear")
    image = _image(33, 47, seed=1)
    assert pre.resized_size(33, 47) == (32, 45)
    resized = Resize(32, interpolation=Image.Resampling.BILINEAR)(image)
    expected = np.asarray(CenterCrop(32)(resized), dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
    got = pre.to_array(image) * np.asarray(pre.std, np.float32)[:, None, None]
    got += np.asarray(pre.mean, np.float32)[:, None, None]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_non_rgb_images_are_converted_like_the_pipelines_loader() -> None:
    pre = Preprocessing(image_size=32)
    grey = _image(40, 50, seed=2).convert("L")
    np.testing.assert_array_equal(pre.to_array(grey), pre.to_array(grey.convert("RGB")))


def test_imagenet_constants_are_timms() -> None:
    from timm.data import IMAGENET_DEFAULT_MEAN as TIMM_MEAN
    from timm.data import IMAGENET_DEFAULT_STD as TIMM_STD

    assert (tuple(TIMM_MEAN), tuple(TIMM_STD)) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    assert Preprocessing().mean == TIMM_MEAN and Preprocessing().std == TIMM_STD
