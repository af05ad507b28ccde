"""Grouping by perceptual hash and the stratified group split, on hand-made hashes."""

from __future__ import annotations

import numpy as np

from trashnet_hf.data.split import SplitResult, hash_groups, split_groups

SHARES = {"train": 0.7, "val": 0.15, "test": 0.15}


def _hex(bits: np.ndarray) -> str:
    return np.packbits(bits).tobytes().hex()


def test_hash_groups_join_near_hashes_transitively() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 64), rng.integers(0, 2, 64)
    a1 = a.copy()
    a1[:3] ^= 1  # 3 bits from a
    a2 = a1.copy()
    a2[3:6] ^= 1  # 3 bits from a1, 6 from a
    groups = hash_groups([_hex(a), _hex(b), _hex(a1), _hex(a2)], threshold=3)
    assert groups[0] == groups[2] == groups[3] != groups[1]
    assert len(set(hash_groups([_hex(a), _hex(a1)], threshold=2).tolist())) == 2


def test_split_is_exact_per_class_and_keeps_groups_whole() -> None:
    rng = np.random.default_rng(1)
    labels, groups, keys = [], [], []
    for cls, n_groups in enumerate((103, 57, 11)):
        for g in range(n_groups):
            size = int(rng.choice([1, 1, 1, 2, 3]))
            for k in range(size):
                labels.append(cls)
                groups.append(cls * 1000 + g)
                keys.append(f"{cls}/{g}-{k}")
    res = split_groups(np.array(groups), labels, keys, SHARES, seed=0)
    split = np.array(res.split)
    labels_arr, groups_arr = np.array(labels), np.array(groups)
    for g in set(groups):
        assert len(set(split[groups_arr == g])) == 1
    for cls in range(3):
        n = (labels_arr == cls).sum()
        for name, share in SHARES.items():
            assert abs(((labels_arr == cls) & (split == name)).sum() - share * n) <= 1.0, (cls, name)


def test_conflicting_groups_are_dropped() -> None:
    res = split_groups(np.array([0, 0, 1, 2, 3]), [0, 1, 1, 0, 1], ["a", "b", "c", "d", "e"], SHARES, seed=0)
    assert res.conflicts == [[0, 1]]
    assert res.split[0] == res.split[1] == ""
    assert all(s for s in res.split[2:])


def _classes(sizes: dict[str, int]) -> tuple[np.ndarray, list[int], list[str], list[str]]:
    """Groups, labels, keys and class names for single-image groups, ``sizes[name]`` per class."""
    names = list(sizes)
    labels = [c for c, name in enumerate(names) for _ in range(sizes[name])]
    keys = [f"{name}/{i:03d}" for name in names for i in range(sizes[name])]
    return np.arange(len(labels)), labels, keys, names


def _split_of(res: SplitResult, keys: list[str], prefix: str) -> dict[str, str]:
    return {k: s for k, s in zip(keys, res.split, strict=True) if k.startswith(prefix)}


def test_each_class_is_dealt_from_its_own_stream_keyed_by_its_name() -> None:
    before = _classes({"alpha": 30, "beta": 25, "gamma": 40})
    # alpha grows, beta is gone: gamma's label number drops from 2 to 1, its name stays.
    after = _classes({"alpha": 33, "gamma": 40})
    res_before = split_groups(*before[:3], SHARES, 7, before[3])
    res_after = split_groups(*after[:3], SHARES, 7, after[3])
    assert _split_of(res_before, before[2], "gamma/") == _split_of(res_after, after[2], "gamma/")
    # Keyed by the label number (the default without names), gamma would have been re-dealt.
    unnamed_before = split_groups(*before[:3], SHARES, 7)
    unnamed_after = split_groups(*after[:3], SHARES, 7)
    assert _split_of(unnamed_before, before[2], "gamma/") != _split_of(unnamed_after, after[2], "gamma/")
