"""Duplicate-aware splitting: group images whose perceptual hashes match (and, with an embedder,
near-duplicate shots: ``trashnet_hf.data.near_duplicates``), drop groups whose members disagree on the
label, and split whole groups into train/val/test, stratified by class.

Why not scikit-learn's StratifiedGroupKFold: it makes k equal folds (70/15/15 is not k equal folds) and
balances mixed-label groups heuristically. Here every kept group is label-pure, so an exact per-class
allocation is possible and simple: each class's groups, in a seeded order, go one by one to the split
furthest below its target share. Every class then lands within one image of its share.

Each class draws from its own random stream, keyed by the seed and its name, so a change to one class
(an image added or removed, a class added) re-deals that class alone.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

SPLITS = ("train", "val", "test")


def split_fingerprint(manifest: Iterable[Mapping[str, object]]) -> str:
    """A run's split in one value: the SHA-256 of its manifest rows (path, label, split), in any order.
    The resume check compares it, and evaluation checks a run's split_manifest.csv against it."""
    rows = sorted(f"{r['path']}|{r['label']}|{r['split']}" for r in manifest)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def hash_pairs(hashes: Sequence[str], threshold: int) -> np.ndarray:
    """Index pairs (i < j), shape (k, 2), of hex perceptual hashes at Hamming distance <= ``threshold``.

    Pairwise distances are computed in chunks with numpy's popcount: 5,000 images take well under a
    second.
    """
    n = len(hashes)
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    bits = np.stack([np.frombuffer(bytes.fromhex(h), dtype=np.uint8) for h in hashes])
    chunk = max(1, (64 << 20) // (n * bits.shape[1]))  # about 64 MB of XORed bytes per block
    pairs = []
    for start in range(0, n, chunk):
        block = bits[start : start + chunk]
        dist = np.bitwise_count(block[:, None, :] ^ bits[None, :, :]).sum(axis=2, dtype=np.int32)
        i, j = np.nonzero(dist <= threshold)
        i = i + start
        keep = i < j
        pairs.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(pairs).astype(np.int64)


def join_pairs(n: int, *pairs: np.ndarray) -> np.ndarray:
    """Group ids of ``n`` images: the connected components (scipy) of the graph whose edges are all the
    given index pairs, so a photo linked to two others by different methods joins both in one group."""
    edges = np.concatenate([np.zeros((0, 2), dtype=np.int64), *pairs])
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def hash_groups(hashes: Sequence[str], threshold: int) -> np.ndarray:
    """Group ids (connected components of "Hamming distance <= threshold") for hex perceptual hashes."""
    return join_pairs(len(hashes), hash_pairs(hashes, threshold))


@dataclass
class SplitResult:
    """Per-image outcome: the group id, and the split name or "" for a dropped (conflicting) image."""

    group: np.ndarray
    split: list[str]
    conflicts: list[list[int]]


def split_groups(
    groups: np.ndarray,
    labels: Sequence[int],
    keys: Sequence[str],
    shares: Mapping[str, float],
    seed: int,
    class_names: Sequence[str] | None = None,
) -> SplitResult:
    """Assign whole groups to splits, stratified by class.

    ``keys`` name each image independently of where it was read from (e.g. "glass/glass1.jpg"): groups are
    ordered by their smallest key before the seeded shuffle, so the same photos get the same split whether
    each one is stored once or twice (the Hub layout). ``class_names[label]`` names a class; the name keys
    its random stream (default: the label number as text).
    """
    labels = np.asarray(labels)
    members: dict[int, list[int]] = {}
    for idx, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(idx)

    conflicts = [m for m in members.values() if len(set(labels[m].tolist())) > 1]
    pure = [m for m in members.values() if len(set(labels[m].tolist())) == 1]

    split = [""] * len(labels)
    names = list(shares)
    share = np.array([shares[s] for s in names], dtype=np.float64)
    for cls in sorted(set(labels.tolist())):
        # Keyed by the name's CRC, not the label number, which shifts when a class is added before it.
        key = class_names[cls] if class_names is not None else str(cls)
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        cls_groups = sorted((m for m in pure if labels[m[0]] == cls), key=lambda m: min(keys[i] for i in m))
        order = rng.permutation(len(cls_groups))
        # Larger groups first, so the single images that follow can even out the counts.
        ordered = sorted((cls_groups[k] for k in order), key=len, reverse=True)
        target = share * sum(len(m) for m in cls_groups)
        count = np.zeros(len(names))
        for m in ordered:
            deficit = target - count
            # Seeded tie-break: a fixed order would hand every class's spare image to the same split.
            s = int(rng.choice(np.flatnonzero(deficit == deficit.max())))
            count[s] += len(m)
            for i in m:
                split[i] = names[s]
    return SplitResult(group=groups, split=split, conflicts=sorted(conflicts))


def smallest_class(shares: Mapping[str, float], limit: int = 2000) -> int | None:
    """The fewest distinct photos a class needs for ``split_groups`` to put at least one in every split
    with a non-zero share (5 at 70/15/15), or None above ``limit``: asked of ``split_groups`` itself, on
    n distinct single photos of one class."""
    wanted = {name for name, share in shares.items() if share > 0}
    for n in range(1, limit + 1):
        result = split_groups(np.arange(n), [0] * n, [f"{i:06d}" for i in range(n)], shares, seed=0)
        if wanted <= set(result.split):
            return n
    return None
