"""Reusing an earlier run's split (``--split-manifest``): the same photos in the same train/val/test, so
that runs with other seeds, backbones or flags are compared on exactly one test set.

Photos are matched by ``<class>/<file name>``, the key the split itself is dealt by, so a manifest written
on another machine or from another copy of the data (its paths absolute there) still matches. Both of the
Hub copy's twins of a photo share a key and so get its one split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trashnet_hf.core.errors import DataError
from trashnet_hf.core.files import read_json_object
from trashnet_hf.core.manifest import DROPPED, read_manifest
from trashnet_hf.data.split import SplitResult

logger = logging.getLogger(__name__)


def manifest_key(path: str, label: str) -> str:
    """``<class>/<file name>``: what a photo is called whatever folder it was read from."""
    return f"{label}/{Path(path).name}"


def _example(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def read_split(manifest: str | Path) -> dict[str, tuple[int, str]]:
    """``key -> (group, split)`` of every photo a manifest lists; DataError for a key listed twice with two
    splits (the file was edited by hand, or two different photos share a class and file name)."""
    rows = read_manifest(manifest)
    split_of: dict[str, tuple[int, str]] = {}
    clashes = []
    for n, row in enumerate(rows):
        key = manifest_key(row["path"], row["label"])
        # A manifest without groups (read_manifest allows it) keeps each photo in a group of its own.
        entry = (int(row["group"]) if row.get("group") else -1 - n, row["split"])
        if split_of.setdefault(key, entry)[1] != entry[1]:
            clashes.append(key)
    if clashes:
        raise DataError(
            f"--split-manifest {manifest}: {len(clashes)} photo(s) listed in two splits "
            f"({_example(clashes)}); pass a split_manifest.csv written by a run, unedited."
        )
    return split_of


def grouping_made_by(manifest: str | Path) -> dict | None:
    """How the reused split was grouped: the ``grouping`` of the data report written beside the manifest
    by the run that made it (its embedder, threshold and pair counts), or None when there is none to read.
    A reused split is only as honest as that grouping, so the report and the card carry it on."""
    report = Path(manifest).with_name("data_report.json")
    if not report.is_file():
        return None
    try:
        grouping = read_json_object(
            report, DataError, "a data report", "the reused split's grouping is unknown"
        )
    except DataError as err:  # the split itself is the manifest, which is fine: go on, and say so
        logger.warning("%s", err)
        return None
    grouping = grouping.get("grouping")
    if isinstance(grouping, dict) and "made_by" in grouping:  # the maker reused a split in turn: its maker's
        return grouping["made_by"]
    return grouping if isinstance(grouping, dict) else None


def check_listed(manifest: str | Path, split_of: dict[str, tuple[int, str]], keys: Sequence[str]) -> None:
    """Refuse (DataError, naming them) photos the manifest lists that the data lacks."""
    missing = sorted(set(split_of) - set(keys))
    if missing:
        raise DataError(
            f"--split-manifest {manifest} lists {len(missing)} photo(s) the data does not hold "
            f"({_example(missing)}); pass the data the manifest was written from (--data-dir or --dataset)."
        )


def reused_split(
    manifest: str | Path, split_of: dict[str, tuple[int, str]], keys: Sequence[str]
) -> SplitResult:
    """The manifest's groups and splits for the readable photos named by ``keys``; DataError naming the
    photos the manifest does not list (a split cannot be reused on data it never saw)."""
    unlisted = sorted({k for k in keys if k not in split_of})
    if unlisted:
        raise DataError(
            f"--split-manifest {manifest} does not list {len(unlisted)} photo(s) of the data "
            f"({_example(unlisted)}); pass the manifest of a run on this data, or leave --split-manifest "
            "out to split it afresh."
        )
    # The manifest's group ids renumbered 0..n-1 (a manifest without groups has negative ones), in their
    # order: a run's own ids come back unchanged.
    group = np.unique([split_of[k][0] for k in keys], return_inverse=True)[1].astype(np.int64)
    split = ["" if split_of[k][1] == DROPPED else split_of[k][1] for k in keys]
    dropped: dict[int, list[int]] = {}
    for k, s in enumerate(split):
        if not s:  # the groups the earlier run dropped for mixing labels: its label conflicts
            dropped.setdefault(int(group[k]), []).append(k)
    return SplitResult(group=group, split=split, conflicts=sorted(dropped.values()))
