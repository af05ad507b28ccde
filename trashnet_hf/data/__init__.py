"""Data preparation: source -> ``datasets`` -> decoded, resized, hashed -> duplicate-aware splits.

Knows nothing of the model: the only shared piece is ``trashnet_hf.preprocessing``, the image geometry.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.fingerprint import Hasher

from trashnet_hf.config import DataConfig
from trashnet_hf.data.images import prepare_batch
from trashnet_hf.data.sources import DataSourceError, read_source
from trashnet_hf.data.split import SPLITS, hash_groups, smallest_class, split_groups
from trashnet_hf.errors import UserError
from trashnet_hf.preprocessing import Preprocessing

__all__ = ["DataError", "DataSourceError", "PreparedData", "prepare_data", "write_outputs"]

logger = logging.getLogger(__name__)

REPORT_FILE = "data_report.json"
MANIFEST_FILE = "split_manifest.csv"


class DataError(UserError):
    """The data cannot be used as it is (too many bad files, an empty class, an empty split, ...)."""


@dataclass
class PreparedData:
    """The splits (``pixels``: raw uint8 HWC square images, ``label``, ``path``), class names, the
    preprocessing they were made with, the report and the manifest rows."""

    splits: datasets.DatasetDict
    class_names: list[str]
    preprocessing: Preprocessing
    report: dict[str, Any]
    manifest: list[dict[str, Any]]


def _features(labels: datasets.ClassLabel) -> datasets.Features:
    return datasets.Features(
        {
            "label": labels,
            "path": datasets.Value("string"),
            "pixels": datasets.Value("binary"),
            "phash": datasets.Value("string"),
            "error": datasets.Value("string"),
        }
    )


def _splits(names: list[str]) -> str:
    """``val split`` or ``val and test splits``."""
    return f"{' and '.join(names)} split{'s' if len(names) > 1 else ''}"


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Read, prepare (cached by the datasets fingerprint) and split the configured dataset."""
    source = read_source(cfg.data_dir, cfg.dataset, cfg.include_originals, cfg.cache_dir)
    raw = source.dataset
    class_label: datasets.ClassLabel = raw.features["label"]
    pre = cfg.preprocessing
    size = pre.resize_size
    num_proc = min(cfg.num_proc, max(1, len(raw) // 64))
    prep_kwargs = {"size": size, "interpolation": pre.interpolation, "hash_size": cfg.hash_size}
    # The cache key: the source, the step's code and the settings that change its output, but not how
    # many threads or processes ran it (datasets would otherwise hash those fn_kwargs too).
    fingerprint = Hasher.hash([raw._fingerprint, prepare_batch, prep_kwargs])
    # Named here: a listed class-folder tree is an in-memory dataset, which datasets would not cache.
    cache_file = Path(cfg.cache_dir or datasets.config.HF_DATASETS_CACHE) / "trashnet_hf_prepared"
    cache_file.mkdir(parents=True, exist_ok=True)
    prepared = raw.map(
        prepare_batch,
        batched=True,
        batch_size=64,
        # Rows are size*size*3 bytes (196 KB at 256 px): keep each write batch to a few tens of MB.
        writer_batch_size=128,
        num_proc=num_proc if num_proc > 1 else None,
        fn_kwargs={**prep_kwargs, "threads": cfg.num_threads or min(8, os.cpu_count() or 1)},
        features=_features(class_label),
        remove_columns=["image"],
        new_fingerprint=fingerprint,
        cache_file_name=str(cache_file / f"prepared-{fingerprint}.arrow"),
        desc=f"Preparing images at {size}px",
    )
    meta = prepared.data.select(["path", "label", "phash", "error"]).to_pydict()
    paths, labels, hashes, errors = meta["path"], meta["label"], meta["phash"], meta["error"]

    bad_files = [{"path": p, "reason": e} for p, e in zip(paths, errors, strict=True) if e is not None]
    good = np.array([i for i, e in enumerate(errors) if e is None], dtype=np.int64)
    for bad in bad_files:
        logger.warning("Skipping unreadable image %s: %s", bad["path"], bad["reason"])

    group = hash_groups([hashes[i] for i in good], cfg.hash_threshold)
    keys = [f"{class_label.int2str(labels[i])}/{Path(paths[i]).name}" for i in good]
    result = split_groups(group, [labels[i] for i in good], keys, cfg.shares, cfg.seed)

    manifest = [
        {
            "path": paths[i],
            "label": class_label.int2str(labels[i]),
            "group": int(result.group[k]),
            "split": result.split[k],
        }
        for k, i in enumerate(good)
        if result.split[k]
    ]
    group_sizes = np.bincount(result.group) if len(result.group) else np.zeros(0, dtype=np.int64)
    found = np.bincount(np.asarray(labels, dtype=np.int64), minlength=class_label.num_classes)
    warnings: list[str] = []
    if source.skipped_in_classes:
        warnings.append(
            f"{len(source.skipped_in_classes)} file(s) in the class folders are not images by their "
            f"extension and were skipped (e.g. {source.skipped_in_classes[0]}); see skipped_files."
        )
    report: dict[str, Any] = {
        "source": cfg.data_dir or f"hf://datasets/{cfg.dataset}",
        "class_names": class_label.names,
        "class_counts": {n: int(found[k]) for k, n in enumerate(class_label.names)},
        "num_images": len(paths),
        "num_bad": len(bad_files),
        "bad_files": bad_files,
        "duplicate_groups": int((group_sizes > 1).sum()),
        "label_conflicts": [[paths[good[k]] for k in members] for members in result.conflicts],
        "num_kept": len(manifest),
        "splits": {
            s: {n: sum(1 for r in manifest if r["split"] == s and r["label"] == n) for n in class_label.names}
            for s in SPLITS
        },
        "preprocessing": pre.to_dict(),
        "hash": {"size": cfg.hash_size, "threshold": cfg.hash_threshold},
        "seed": cfg.seed,
        "skipped_files": source.skipped_files,
        "warnings": warnings,
    }
    kept = {n: sum(report["splits"][s][n] for s in SPLITS) for n in class_label.names}
    reached = [s for s in SPLITS if cfg.shares[s] > 0]
    need = smallest_class(cfg.shares)
    shares_txt = "/".join(f"{cfg.shares[s]:g}" for s in SPLITS)
    need_txt = f"at least {need} distinct photos" if need else "more distinct photos"
    for name in class_label.names:
        missing = [s for s in reached if report["splits"][s][name] == 0]
        if missing and kept[name]:
            warnings.append(
                f"class {name!r} has {kept[name]} usable image(s), too few for the {_splits(missing)}, "
                f"which hold none of it (a class needs {need_txt} at shares {shares_txt}): its scores there "
                "are missing; add images of it."
            )
    for warning in warnings:
        logger.warning(warning)

    if len(paths) and len(bad_files) / len(paths) > cfg.max_bad_fraction:
        write_outputs(cfg.output_dir, report, manifest)
        raise DataError(
            f"{len(bad_files)} of {len(paths)} files are not readable images "
            f"({len(bad_files) / len(paths):.1%} > --max-bad-fraction {cfg.max_bad_fraction:g}); "
            f"the list is in {Path(cfg.output_dir) / REPORT_FILE}. Fix or remove them, or raise the flag."
        )
    for name in class_label.names:
        if report["splits"]["train"][name] == 0:
            write_outputs(cfg.output_dir, report, manifest)
            raise DataError(f"class {name!r} has no images left for the train split; add images of it.")
    empty = [s for s in reached if not sum(report["splits"][s].values())]
    if empty:
        write_outputs(cfg.output_dir, report, manifest)
        sizes = ", ".join(f"{n!r} {c}" for n, c in sorted(kept.items(), key=lambda kv: (kv[1], kv[0]))[:6])
        flags = " and ".join(f"--{s}-share {cfg.shares[s]:g}" for s in empty)
        raise DataError(
            f"the {_splits(empty)} would hold no images: every class is too small to reach "
            f"{'it' if len(empty) == 1 else 'them'} (usable images: {sizes}{', ...' if len(kept) > 6 else ''}"
            f"; a class needs {need_txt} at shares {shares_txt}); add images, or change {flags}."
        )

    split_of = {"train": [], "val": [], "test": []}
    for k, i in enumerate(good):
        if result.split[k]:
            split_of[result.split[k]].append(int(i))
    splits = datasets.DatasetDict(
        {s: prepared.select(idx).select_columns(["pixels", "label", "path"]) for s, idx in split_of.items()}
    )
    return PreparedData(splits, list(class_label.names), pre, report, manifest)


def write_outputs(output_dir: str | Path, report: dict[str, Any], manifest: list[dict[str, Any]]) -> None:
    """Write ``data_report.json`` and ``split_manifest.csv`` into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    with (out / MANIFEST_FILE).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "group", "split"])
        writer.writeheader()
        writer.writerows(manifest)
