"""Near-duplicate shots: the same object photographed again moments later, moved or turned a little.

A perceptual hash finds the same photo stored twice (a resized copy, a re-encode); it misses a second shot
of the same object, whose pixels moved. Those pairs straddle train/val/test and inflate accuracy. An
``Embedder`` from the caller (training passes the pretrained backbone about to be fine-tuned) maps every
photo to a vector; pairs whose cosine similarity reaches ``--near-duplicate-threshold`` are joined with
the hash twins, and the connected components are the groups that move whole.

Knows nothing of models: an embedder is anything with a name, an input size, a fingerprint and a call.
Vectors are computed on the fixed decode the hash reads (``HASH_MIN_SIDE``), never on the ``--image-size``
frame, and cached by the datasets fingerprint, so the split does not depend on the stored size and a
second run costs nothing.
"""

from __future__ import annotations

import inspect
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import datasets
import numpy as np
from datasets.fingerprint import Hasher
from PIL import Image
from sklearn.neighbors import radius_neighbors_graph

from trashnet_hf.core import decoding
from trashnet_hf.data import images
from trashnet_hf.data.images import DECODE_ERRORS, HASH_MIN_SIDE, load_rgb

logger = logging.getLogger(__name__)

EMBED_BATCH = 64  # photos per embedder call: a few MB of input tensors at 128-224 px


class Embedder(Protocol):
    """Maps RGB photos to vectors whose cosine similarity is high for shots of the same object."""

    name: str  # what the data report names (e.g. the backbone's --model-name)
    size: int  # the input side it embeds at, in pixels (fixed: never --image-size)
    fingerprint: str  # changes whenever the vectors would (weights, transform, size): the cache key

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        """An (n, d) float array, one row per image."""
        ...


def _decode(image: dict[str, Any]) -> Image.Image | None:
    """The frame the perceptual hash reads (its size depends on the file alone), or None if unreadable."""
    try:
        return load_rgb(image["bytes"] if image.get("bytes") else image["path"], min_side=HASH_MIN_SIDE)
    except DECODE_ERRORS:
        return None  # reported (and dropped) by the preparation step, which hits the same decode


def embed_batch(batch: dict[str, list[Any]], *, embedder: Embedder, threads: int = 1) -> dict[str, list]:
    """``Dataset.map`` step: one vector per image (an empty list for a file that does not decode)."""
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:  # JPEG decoding releases the GIL
            frames = list(pool.map(_decode, batch["image"]))
    else:
        frames = [_decode(image) for image in batch["image"]]
    readable = [frame for frame in frames if frame is not None]
    out = np.asarray(embedder(readable), dtype=np.float32) if readable else np.zeros((0, 0), np.float32)
    if out.ndim != 2 or len(out) != len(readable):
        raise ValueError(f"embedder {embedder.name!r} gave shape {out.shape} for {len(readable)} images")
    vectors = iter(out)
    return {"embedding": [next(vectors).tolist() if frame is not None else [] for frame in frames]}


def embed_dataset(
    raw: datasets.Dataset, embedder: Embedder, cache_dir: str | None, threads: int
) -> np.ndarray:
    """Unit-length (n, d) float32 vectors of every image of the raw dataset (zeros for unreadable files),
    cached under ``cache_dir``: the key is the source, the embedder's fingerprint and this step's code."""
    code = inspect.getsource(sys.modules[__name__]) + inspect.getsource(images) + inspect.getsource(decoding)
    fingerprint = Hasher.hash([raw._fingerprint, embedder.fingerprint, code])
    folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "trashnet_hf_embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    embedded = raw.map(
        embed_batch,
        batched=True,
        batch_size=EMBED_BATCH,
        fn_kwargs={"embedder": embedder, "threads": threads},
        features=datasets.Features({"embedding": datasets.List(datasets.Value("float32"))}),
        remove_columns=raw.column_names,
        new_fingerprint=fingerprint,
        cache_file_name=str(folder / f"embeddings-{fingerprint}.arrow"),
        desc=f"Embedding images with {embedder.name} at {embedder.size}px",
    )
    column = embedded.data.column("embedding").combine_chunks()
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    dims = set(lengths[lengths > 0].tolist())
    if len(dims) > 1:
        raise ValueError(f"embedder {embedder.name!r} returned vectors of several lengths: {sorted(dims)}")
    vectors = np.zeros((len(lengths), dims.pop() if dims else 0), dtype=np.float32)
    vectors[lengths > 0] = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, vectors.shape[1])
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def embedding_pairs(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Index pairs (i < j), shape (k, 2), whose cosine similarity is at least ``threshold``: scikit-learn's
    radius-neighbours graph at cosine distance ``1 - threshold`` (brute force, in memory-bounded chunks)."""
    if len(vectors) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    # float64: in float32 an exact duplicate can land a hair above distance 0 and miss a threshold of 1.
    graph = radius_neighbors_graph(
        np.asarray(vectors, dtype=np.float64), radius=1.0 - threshold + 1e-9, metric="cosine"
    ).tocoo()
    keep = graph.row < graph.col
    return np.stack([graph.row[keep], graph.col[keep]], axis=1).astype(np.int64)
