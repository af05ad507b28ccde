"""Data preparation: source -> ``datasets`` -> decoded, resized, hashed -> duplicate-aware splits.

Knows nothing of the model: the only shared piece is ``trashnet_hf.preprocessing``, the image geometry.
"""

from __future__ import annotations

import csv
import inspect
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
from trashnet_hf.data import images
from trashnet_hf.data.images import prepare_batch
from trashnet_hf.data.sources import DataSourceError, Source, read_source
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


def _prepare_images(cfg: DataConfig, raw: datasets.Dataset, pre: Preprocessing) -> datasets.Dataset:
    """Decode, resize and hash every image (``prepare_batch``), cached by the datasets fingerprint."""
    num_proc = min(cfg.num_proc, max(1, len(raw) // 64))
    prep_kwargs = {
        "size": pre.resize_size,
        "crop_size": pre.image_size,  # where the square sits, so the eval crop is serving's, pixel for pixel
        "interpolation": pre.interpolation,
        "hash_size": cfg.hash_size,
    }
    # The cache key: the source, the step's code and the settings that change its output, but not how
    # many threads or processes ran it (datasets would otherwise hash those fn_kwargs too). The code is
    # the whole images module's source: datasets hashes a function's own code only, not the helpers it
    # calls, so a change to decoding or hashing would otherwise reuse stale pixels and hashes.
    fingerprint = Hasher.hash([raw._fingerprint, inspect.getsource(images), prep_kwargs])
    # Named here: a listed class-folder tree is an in-memory dataset, which datasets would not cache.
    cache_file = Path(cfg.cache_dir or datasets.config.HF_DATASETS_CACHE) / "trashnet_hf_prepared"
    cache_file.mkdir(parents=True, exist_ok=True)
    return raw.map(
        prepare_batch,
        batched=True,
        batch_size=64,
        # Rows are size*size*3 bytes (196 KB at 256 px): keep each write batch to a few tens of MB.
        writer_batch_size=128,
        num_proc=num_proc if num_proc > 1 else None,
        fn_kwargs={**prep_kwargs, "threads": cfg.num_threads or min(8, os.cpu_count() or 1)},
        features=_features(raw.features["label"]),
        remove_columns=["image"],
        new_fingerprint=fingerprint,
        cache_file_name=str(cache_file / f"prepared-{fingerprint}.arrow"),
        desc=f"Preparing images at {pre.resize_size}px",
    )


def _kept(report: dict[str, Any]) -> dict[str, int]:
    """Each class's images kept in some split (duplicates grouped, label conflicts dropped)."""
    return {n: sum(counts[n] for counts in report["splits"].values()) for n in report["class_names"]}


def _needs(cfg: DataConfig) -> str:
    """How many photos a class needs at these shares, for the messages about small classes."""
    need = smallest_class(cfg.shares)
    shares = "/".join(f"{cfg.shares[s]:g}" for s in SPLITS)
    return f"{f'at least {need}' if need else 'more'} distinct photos at shares {shares}"


def _warnings(cfg: DataConfig, report: dict[str, Any], source: Source) -> list[str]:
    """Files skipped inside class folders, and classes too small to reach every split with a share."""
    warnings: list[str] = []
    if source.skipped_in_classes:
        warnings.append(
            f"{len(source.skipped_in_classes)} file(s) in the class folders are not images by their "
            f"extension and were skipped (e.g. {source.skipped_in_classes[0]}); see skipped_files."
        )
    reached = [s for s in SPLITS if cfg.shares[s] > 0]
    for name, kept in _kept(report).items():
        missing = [s for s in reached if report["splits"][s][name] == 0]
        if missing and kept:
            warnings.append(
                f"class {name!r} has {kept} usable image(s), too few for the {_splits(missing)}, which hold "
                f"none of it (a class needs {_needs(cfg)}): its scores there are missing; add images of it."
            )
    return warnings


def _refusal(cfg: DataConfig, report: dict[str, Any]) -> str | None:
    """Why the prepared data cannot be trained on (too many bad files, a class or a split left empty),
    or None."""
    n_paths, n_bad = report["num_images"], report["num_bad"]
    if n_paths and n_bad / n_paths > cfg.max_bad_fraction:
        return (
            f"{n_bad} of {n_paths} files are not readable images "
            f"({n_bad / n_paths:.1%} > --max-bad-fraction {cfg.max_bad_fraction:g}); "
            f"the list is in {Path(cfg.output_dir) / REPORT_FILE}. Fix or remove them, or raise the flag."
        )
    for name, count in report["splits"]["train"].items():
        if count == 0:
            return f"class {name!r} has no images left for the train split; add images of it."
    empty = [s for s in SPLITS if cfg.shares[s] > 0 and not sum(report["splits"][s].values())]
    if empty:
        kept = _kept(report)
        sizes = ", ".join(f"{n!r} {c}" for n, c in sorted(kept.items(), key=lambda kv: (kv[1], kv[0]))[:6])
        flags = " and ".join(f"--{s}-share {cfg.shares[s]:g}" for s in empty)
        return (
            f"the {_splits(empty)} would hold no images: every class is too small to reach "
            f"{'it' if len(empty) == 1 else 'them'} (usable images: {sizes}{', ...' if len(kept) > 6 else ''}"
            f"; a class needs {_needs(cfg)}); add images, or change {flags}."
        )
    return None


def prepare_data(cfg: DataConfig, preprocessing: Preprocessing | None = None) -> PreparedData:
    """Read, prepare (cached by the datasets fingerprint) and split the configured dataset, at the geometry
    of ``preprocessing`` (the model's, from the caller; default: what ``cfg``'s flags alone set)."""
    pre = preprocessing or cfg.preprocessing
    source = read_source(cfg.data_dir, cfg.dataset, cfg.include_originals, cfg.cache_dir)
    class_label: datasets.ClassLabel = source.dataset.features["label"]
    prepared = _prepare_images(cfg, source.dataset, pre)
    meta = prepared.data.select(["path", "label", "phash", "error"]).to_pydict()
    paths, labels, hashes, errors = meta["path"], meta["label"], meta["phash"], meta["error"]

    bad_files = [{"path": p, "reason": e} for p, e in zip(paths, errors, strict=True) if e is not None]
    good = np.array([i for i, e in enumerate(errors) if e is None], dtype=np.int64)
    for bad in bad_files:
        logger.warning("Skipping unreadable image %s: %s", bad["path"], bad["reason"])

    group = hash_groups([hashes[i] for i in good], cfg.hash_threshold)
    keys = [f"{class_label.int2str(labels[i])}/{Path(paths[i]).name}" for i in good]
    result = split_groups(group, [labels[i] for i in good], keys, cfg.shares, cfg.seed, class_label.names)

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
    splits = {
        s: {n: sum(1 for r in manifest if r["split"] == s and r["label"] == n) for n in class_label.names}
        for s in SPLITS
    }
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
        "splits": splits,
        "preprocessing": pre.to_dict(),
        "hash": {"size": cfg.hash_size, "threshold": cfg.hash_threshold},
        "seed": cfg.seed,
        "skipped_files": source.skipped_files,
    }
    report["warnings"] = _warnings(cfg, report, source)
    for warning in report["warnings"]:
        logger.warning(warning)
    if (refusal := _refusal(cfg, report)) is not None:
        write_outputs(cfg.output_dir, report, manifest)  # the report shows what is wrong
        raise DataError(refusal)

    split_of = {"train": [], "val": [], "test": []}
    for k, i in enumerate(good):
        if result.split[k]:
            split_of[result.split[k]].append(int(i))
    splits_ds = datasets.DatasetDict(
        {s: prepared.select(idx).select_columns(["pixels", "label", "path"]) for s, idx in split_of.items()}
    )
    return PreparedData(splits_ds, list(class_label.names), pre, report, manifest)


def write_outputs(output_dir: str | Path, report: dict[str, Any], manifest: list[dict[str, Any]]) -> None:
    """Write ``data_report.json`` and ``split_manifest.csv`` into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    with (out / MANIFEST_FILE).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "group", "split"])
        writer.writeheader()
        writer.writerows(manifest)
