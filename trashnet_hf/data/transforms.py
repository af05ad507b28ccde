"""Batch transforms on the training device: uint8 NHWC batches in, normalised channels-last floats out
(contiguous NCHW with ``channels_last=False``, training's ``--channels-last false``).

The CPU only slices stored uint8 arrays; cropping, flipping, colour jitter and normalisation run on the
whole batch wherever the batch lives (the GPU when there is one), with every random draw made on that
device, so there is no per-image CPU work and no host sync. torchvision's v2 transforms draw one set of
parameters per call (the same crop for the whole batch), and kornia's per-sample augmentation measured
about 5x slower on the CPU, so per-sample random-resized-crop + flip is one ``affine_grid``/``grid_sample``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trashnet_hf.core.preprocessing import Preprocessing


def _to_float_nchw(pixels: torch.Tensor) -> torch.Tensor:
    # permute() of a contiguous NHWC tensor is already channels-last in memory: no copy.
    return pixels.permute(0, 3, 1, 2).float().div_(255.0)


class _Normalize(nn.Module):
    """(x - mean) / std, written straight into a channels-last tensor (or, with ``channels_last=False``,
    a contiguous NCHW one): one pass over the batch."""

    def __init__(self, pre: Preprocessing, channels_last: bool = True) -> None:
        super().__init__()
        std = torch.tensor(pre.std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / std, persistent=False)
        self.register_buffer("shift", -torch.tensor(pre.mean).view(1, 3, 1, 1) / std, persistent=False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=self.memory_format)
        return torch.addcmul(self.shift, x, self.scale, out=out)


class EvalTransform(nn.Module):
    """Centre crop to ``image_size`` and normalise: timm's eval transform applied to stored images, which
    were already resized to ``resize_size`` at preparation time."""

    def __init__(self, pre: Preprocessing, channels_last: bool = True) -> None:
        super().__init__()
        self.size = pre.image_size
        self.normalize = _Normalize(pre, channels_last)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h, w = pixels.shape[1:3]
        # Python's round is half to even, like torchvision's CenterCrop that serving applies.
        top, left = round((h - self.size) / 2), round((w - self.size) / 2)
        crop = pixels[:, top : top + self.size, left : left + self.size]
        return self.normalize(_to_float_nchw(crop))


class TrainTransform(nn.Module):
    """Per-sample random resized crop, horizontal flip and mild colour jitter, then normalise."""

    def __init__(
        self,
        pre: Preprocessing,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        jitter: float = 0.2,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.size = pre.image_size
        self.scale, self.log_ratio = scale, (math.log(ratio[0]), math.log(ratio[1]))
        self.hflip, self.jitter = hflip, jitter
        self.normalize = _Normalize(pre, channels_last)

    def _uniform(self, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n, device=device) * (high - low) + low

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        b, dev = pixels.shape[0], pixels.device
        x = _to_float_nchw(pixels)
        # Crop box in normalised [-1, 1] coordinates: half-width w, half-height h, centre (cx, cy).
        area = self._uniform(b, *self.scale, dev)
        aspect = self._uniform(b, *self.log_ratio, dev).exp()
        w = (area * aspect).sqrt().clamp(max=1.0)
        h = (area / aspect).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - h)
        flip = torch.where(torch.rand(b, device=dev) < self.hflip, -1.0, 1.0)
        # The sampling grid of an axis-aligned crop (+ flip), built by broadcasting: F.affine_grid would
        # spend a batched matmul on the same numbers.
        base = (torch.arange(self.size, device=dev, dtype=torch.float32) * 2 + 1) / self.size - 1
        gx = (w * flip).view(b, 1, 1) * base.view(1, 1, -1) + cx.view(b, 1, 1)
        gy = h.view(b, 1, 1) * base.view(1, -1, 1) + cy.view(b, 1, 1)
        grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.jitter > 0:
            x = self._color_jitter(x)
        return self.normalize(x)

    def _color_jitter(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, then contrast, then saturation (torchvision's order), folded into one affine map per
        image: with g the grey image and m its mean, the three steps give A*x + B*g + C."""
        b, dev, j = x.shape[0], x.device, self.jitter
        bright, contrast, sat = (self._uniform(b, 1 - j, 1 + j, dev).view(b, 1, 1, 1) for _ in "bcs")
        # Weighted sum of channel slices: a 1x1 conv2d does the same maths ~20x slower on the CPU.
        gray = x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114
        mean = gray.mean(dim=(2, 3), keepdim=True)
        scale = bright * contrast
        offset = (1 - sat) * scale * gray + bright * mean * (1 - contrast)
        return torch.addcmul(offset, sat * scale, x).clamp_(0.0, 1.0)
