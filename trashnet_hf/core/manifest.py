"""The split manifest: the CSV (``path``, ``label``, ``group``, ``split``) a data preparation or training run
writes, and evaluation and the ONNX export read back.

Standard library only, so serving can read a run's manifest without the data stack (``datasets``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from trashnet_hf.core.errors import UserError

__all__ = ["DROPPED", "MANIFEST_COLUMNS", "MANIFEST_FILE", "ManifestError", "read_manifest"]

MANIFEST_FILE = "split_manifest.csv"
MANIFEST_COLUMNS = ("path", "label", "group", "split")
# The split of a readable photo left out of every split (its group mixes labels): listed, so that a run
# reusing the manifest (--split-manifest) leaves out exactly the same photos.
DROPPED = "dropped"


class ManifestError(UserError):
    """A file given as a split manifest is not one (not CSV, or without its columns)."""


def read_manifest(manifest: str | Path) -> list[dict[str, str]]:
    """The rows (path, label, group, split) of a training run's ``split_manifest.csv``; ManifestError for a
    CSV without those columns."""
    path = Path(manifest)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(f"{path}: not a split manifest (not readable as CSV: {err}).") from None
    if rows and not {"path", "label", "split"} <= set(rows[0]):
        raise ManifestError(f"{path}: not a split manifest (columns path, label, group, split expected).")
    return rows
