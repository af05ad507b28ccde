"""Data preparation: source -> ``datasets`` -> decoded, resized, hashed -> duplicate-aware splits.

The work is in ``prepare`` (the pipeline), ``report`` (the data report and output files), ``sources``,
``images``, ``near_duplicates``, ``split`` and ``extra``; the split-manifest CSV is ``core.manifest``.
"""

from trashnet_hf.core.manifest import MANIFEST_FILE, read_manifest
from trashnet_hf.data.near_duplicates import Embedder
from trashnet_hf.data.prepare import DataError, PreparedData, prepare_data, read_manifest_split
from trashnet_hf.data.report import REPORT_FILE, write_outputs
from trashnet_hf.data.sources import DataSourceError

__all__ = [
    "MANIFEST_FILE", "REPORT_FILE", "DataError", "DataSourceError", "Embedder", "PreparedData",
    "prepare_data", "read_manifest", "read_manifest_split", "write_outputs",
]  # fmt: skip
