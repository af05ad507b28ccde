"""DataLoaders over prepared splits: uint8 NHWC ``pixels`` and int64 ``label`` batches, no per-image work.

Pixels are stored as raw bytes (``Value("binary")``), not ``Array3D``: datasets encodes ``Array3D`` as
three levels of nested lists (about 1 ms per 256 px image to write) and decodes it at ~80 ms per batch of
64, while a batch of binary rows is one contiguous Arrow buffer, read here as one array in ~2 ms. That
keeps a GPU fed from a single loader process. All image transforms run later, on the device
(``trashnet_hf.data.transforms``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import datasets
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset


def _side(nbytes: int) -> int:
    side = math.isqrt(nbytes // 3)
    if side * side * 3 != nbytes:
        raise ValueError(f"a stored image of {nbytes} bytes is not a square RGB uint8 image")
    return side


def decode_pixels(blob: bytes) -> np.ndarray:
    """One stored image as a (side, side, 3) uint8 array."""
    side = _side(len(blob))
    return np.frombuffer(blob, dtype=np.uint8).reshape(side, side, 3)


def _batch_pixels(column: pa.ChunkedArray) -> np.ndarray:
    """A batch of stored images as one (B, side, side, 3) array, straight from the Arrow data buffer."""
    arr = column.combine_chunks()
    if len(arr) == 0:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    side = _side(int(offsets[1] - offsets[0]))
    if len(data) != len(arr) * side * side * 3:
        raise ValueError("stored images in one split must all have the same size")
    return data.reshape(len(arr), side, side, 3)


class ImageBatches(TorchDataset):
    """A prepared split as a map-style torch dataset that fetches whole batches (``__getitems__``)."""

    def __init__(self, ds: datasets.Dataset) -> None:
        self.ds = ds.select_columns(["pixels", "label"]).with_format("arrow")

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        table = self.ds[list(indices)]
        # copy(): Arrow buffers are read-only, and pinned-memory transfer needs an owned tensor.
        pixels = torch.from_numpy(_batch_pixels(table.column("pixels")).copy())
        labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
        return {"pixels": pixels, "label": labels}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([index])
        return {k: v[0] for k, v in batch.items()}


def _already_collated(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


def make_loader(
    ds: datasets.Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader yielding ``{"pixels": uint8 (B, H, W, 3), "label": int64 (B,)}``."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        ImageBatches(ds),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        collate_fn=_already_collated,
    )
