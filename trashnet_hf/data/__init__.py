"""Data preparation: source -> ``datasets`` -> decoded, resized, hashed -> duplicate-aware splits.

Knows nothing of the model: the only shared piece is ``trashnet_hf.preprocessing``, the image geometry. To
group near-duplicate shots, the caller may pass an ``Embedder`` (a protocol: training's is the pretrained
backbone, ``trashnet_hf.embeddings``).
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.fingerprint import Hasher

from trashnet_hf import decoding
from trashnet_hf.config import DataConfig
from trashnet_hf.data import images
from trashnet_hf.data.extra import ExtraImages, extra_fate, read_extra
from trashnet_hf.data.images import prepare_batch
from trashnet_hf.data.near_duplicates import Embedder, embed_dataset, embedding_pairs
from trashnet_hf.data.sources import DataSourceError, Source, read_source
from trashnet_hf.data.split import (
    SPLITS,
    SplitResult,
    hash_pairs,
    join_pairs,
    smallest_class,
    split_fingerprint,
    split_groups,
)
from trashnet_hf.errors import UserError
from trashnet_hf.preprocessing import Preprocessing

__all__ = [
    "DataError", "DataSourceError", "Embedder", "PreparedData", "prepare_data", "read_manifest",
    "read_manifest_split", "write_outputs",
]  # fmt: skip

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
    # the whole images and decoding modules' source: datasets hashes a function's own code only, not the
    # helpers it calls, so a change to decoding or hashing would otherwise reuse stale pixels and hashes.
    code = inspect.getsource(images) + inspect.getsource(decoding)
    fingerprint = Hasher.hash([raw._fingerprint, code, prep_kwargs])
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
        fn_kwargs={**prep_kwargs, "threads": cfg.threads},
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
    """Files skipped inside class folders, label conflicts made by embeddings alone, and classes too small
    to reach every split with a share."""
    warnings: list[str] = []
    if source.skipped_in_classes:
        warnings.append(
            f"{len(source.skipped_in_classes)} file(s) in the class folders are not images by their "
            f"extension and were skipped (e.g. {source.skipped_in_classes[0]}); see skipped_files."
        )
    if dropped := report["grouping"]["dropped_by_embedding"]:
        warnings.append(
            f"{sum(map(len, dropped))} image(s) were dropped as label conflicts only because backbone "
            f"embeddings (cosine >= {cfg.near_duplicate_threshold:g}) tied them to photos of another class "
            f"(e.g. {dropped[0][0]}); if they are distinct objects, raise --near-duplicate-threshold (0: "
            "perceptual hash only)."
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
            joined = report["grouping"]["dropped_by_embedding"]
            fix = ", or raise --near-duplicate-threshold (see the warnings)" if joined else ""
            return f"class {name!r} has no images left for the train split; add images of it{fix}."
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


def _grouping(
    cfg: DataConfig, raw: datasets.Dataset, good: np.ndarray, hashes: list[str], embedder: Embedder | None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Group ids of the readable images (perceptual-hash twins, joined with near-duplicate shots when an
    embedder is given and the threshold is not 0), the hash's groups alone, and the report's ``grouping``
    entry saying which."""
    pairs = hash_pairs([hashes[i] for i in good], cfg.hash_threshold)
    hash_group = join_pairs(len(good), pairs)
    info: dict[str, Any] = {
        "method": "perceptual hash",
        "hash_pairs": len(pairs),
        "embedding_model": None,
        "embedding_input_size": None,
        "embedding_pairs": None,
        "near_duplicate_threshold": cfg.near_duplicate_threshold,
    }
    if embedder is None or cfg.near_duplicate_threshold == 0:
        info["hash_only_because"] = (
            "--near-duplicate-threshold 0"
            if cfg.near_duplicate_threshold == 0
            else "no pretrained backbone to embed with (--pretrained false, or data prepared without a model)"
        )
        logger.info("Grouping by perceptual hash only: %s", info["hash_only_because"])
        return hash_group, hash_group, info
    vectors = embed_dataset(raw, embedder, cfg.cache_dir, cfg.threads)[good]
    near = embedding_pairs(vectors, cfg.near_duplicate_threshold)
    info |= {
        "method": "perceptual hash + backbone embeddings",
        "embedding_model": embedder.name,
        "embedding_input_size": embedder.size,
        "embedding_pairs": len(near),
    }
    logger.info(
        "Grouping by perceptual hash (%d pairs) and %s embeddings at %d px (%d pairs at cosine >= %g)",
        len(pairs), embedder.name, embedder.size, len(near), cfg.near_duplicate_threshold,
    )  # fmt: skip
    return join_pairs(len(good), pairs, near), hash_group, info


def _dropped_by_embedding(
    result: SplitResult, hash_group: np.ndarray, labels: list[int], paths: list[str], good: np.ndarray
) -> list[list[str]]:
    """Per label conflict, the images the hash alone would have kept: their own hash group is of one class,
    and only embedding links tied them to a photo of another class."""
    classes: dict[int, set[int]] = {}
    for members in result.conflicts:
        for k in members:
            classes.setdefault(int(hash_group[k]), set()).add(labels[k])
    dropped = [[paths[good[k]] for k in m if len(classes[int(hash_group[k])]) == 1] for m in result.conflicts]
    return [d for d in dropped if d]


def _group_list(result: SplitResult, paths: list[str], good: np.ndarray) -> list[dict[str, Any]]:
    """Every group of more than one image, largest first: its id, size, split ("" when dropped as a label
    conflict) and member paths."""
    members: dict[int, list[int]] = {}
    for k, g in enumerate(result.group.tolist()):
        members.setdefault(g, []).append(k)
    groups = [
        {"group": g, "size": len(m), "split": result.split[m[0]], "paths": sorted(paths[good[k]] for k in m)}
        for g, m in members.items()
        if len(m) > 1
    ]
    return sorted(groups, key=lambda row: (-row["size"], row["paths"][0]))


def _fold_extra(
    cfg: DataConfig, extra: ExtraImages, pre: Preprocessing, embedder: Embedder | None,
    main: tuple[datasets.Dataset, dict[str, list], np.ndarray, SplitResult],
) -> tuple[datasets.Dataset, list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """The --extra-data-dir images kept for the train split (prepared rows), their manifest rows and the
    report's ``extra_data`` entry: grouped with the main images (``main``: the raw dataset, its prepared
    metadata, the readable rows and their split) as those are grouped together (``data.extra``)."""
    raw, meta, good, result = main
    names = raw.features["label"].names
    prepared = _prepare_images(cfg, extra.dataset, pre)
    x = prepared.data.select(["path", "label", "phash", "error"]).to_pydict()
    ok = np.array([i for i, e in enumerate(x["error"]) if e is None], dtype=np.int64)
    dropped = [
        {"path": p, "reason": f"unreadable: {e}"} for p, e in zip(x["path"], x["error"], strict=True) if e
    ]
    # The readable main images, then the readable extra ones: the rows extra_fate groups together.
    paths, labels, hashes = (
        [meta[k][i] for i in good] + [x[k][i] for i in ok] for k in ("path", "label", "phash")
    )
    pairs = [hash_pairs(hashes, cfg.hash_threshold)]
    if embedder is not None and cfg.near_duplicate_threshold != 0 and len(ok):
        vectors = [
            embed_dataset(ds, embedder, cfg.cache_dir, cfg.threads)[idx]
            for ds, idx in ((raw, good), (extra.dataset, ok))
        ]
        pairs.append(embedding_pairs(np.concatenate(vectors), cfg.near_duplicate_threshold))
    fate = extra_fate(len(good), result.split, result.group, labels, paths, pairs, names)
    kept = [int(ok[k]) for k, s in enumerate(fate.split) if s == "train"]
    dropped += [{"path": paths[len(good) + k], "reason": r} for k, r in enumerate(fate.reason) if r]
    manifest = [
        {"path": paths[len(good) + k], "label": names[labels[len(good) + k]], "group": g, "split": "train"}
        for k, g in enumerate(fate.group)
        if fate.split[k] == "train"
    ]
    report = {
        "dir": str(extra.folder),
        "num_read": len(x["path"]),
        "num_kept": len(kept),
        "num_dropped": len(dropped),
        "kept_per_class": {n: sum(1 for r in manifest if r["label"] == n) for n in names},
        "dropped": dropped,
        "skipped_files": extra.skipped_files,
    }
    logger.info(
        "Extra images from %s: %d read, %d kept for train, %d dropped",
        extra.folder, len(x["path"]), len(kept), len(dropped),
    )  # fmt: skip
    return prepared.select(kept).select_columns(["pixels", "label", "path"]), manifest, report


def _split_datasets(
    prepared: datasets.Dataset, good: np.ndarray, result: SplitResult
) -> datasets.DatasetDict:
    """The prepared rows of each split (``pixels``, ``label``, ``path``), in file order."""
    split_of: dict[str, list[int]] = {s: [] for s in SPLITS}
    for k, i in enumerate(good):
        if result.split[k]:
            split_of[result.split[k]].append(int(i))
    return datasets.DatasetDict(
        {s: prepared.select(idx).select_columns(["pixels", "label", "path"]) for s, idx in split_of.items()}
    )


def prepare_data(
    cfg: DataConfig, preprocessing: Preprocessing | None = None, embedder: Embedder | None = None
) -> PreparedData:
    """Read, prepare (cached by the datasets fingerprint) and split the configured dataset, at the geometry
    of ``preprocessing`` (the model's, from the caller; default: what ``cfg``'s flags alone set).

    With ``embedder`` (the caller's pretrained backbone), near-duplicate shots are grouped with the
    perceptual-hash twins (``near_duplicates``); without it, the hash alone groups."""
    pre = preprocessing or cfg.preprocessing
    source = read_source(cfg.data_dir, cfg.dataset, cfg.include_originals, cfg.cache_dir)
    class_label: datasets.ClassLabel = source.dataset.features["label"]
    # Listed now (cheap) so that a bad --extra-data-dir fails before any image is decoded.
    extra = read_extra(cfg.extra_data_dir, class_label.names) if cfg.extra_data_dir else None
    prepared = _prepare_images(cfg, source.dataset, pre)
    meta = prepared.data.select(["path", "label", "phash", "error"]).to_pydict()
    paths, labels, hashes, errors = meta["path"], meta["label"], meta["phash"], meta["error"]

    bad_files = [{"path": p, "reason": e} for p, e in zip(paths, errors, strict=True) if e is not None]
    good = np.array([i for i, e in enumerate(errors) if e is None], dtype=np.int64)
    for bad in bad_files:
        logger.warning("Skipping unreadable image %s: %s", bad["path"], bad["reason"])

    group, hash_group, grouping = _grouping(cfg, source.dataset, good, hashes, embedder)
    keys = [f"{class_label.int2str(labels[i])}/{Path(paths[i]).name}" for i in good]
    good_labels = [labels[i] for i in good]
    result = split_groups(group, good_labels, keys, cfg.shares, cfg.seed, class_label.names)
    grouping["dropped_by_embedding"] = _dropped_by_embedding(result, hash_group, good_labels, paths, good)

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
    extra_rows, extra_report = None, None
    if extra is not None:  # train only, after the main split: the main images never move
        extra_rows, extra_manifest, extra_report = _fold_extra(
            cfg, extra, pre, embedder, (source.dataset, meta, good, result)
        )
        manifest += extra_manifest
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
        # What evaluation checks the run's split_manifest.csv against (it must be the split trained on).
        "split_fingerprint": split_fingerprint(manifest),
        "preprocessing": pre.to_dict(),
        "hash": {"size": cfg.hash_size, "threshold": cfg.hash_threshold},
        "grouping": grouping,
        "groups": _group_list(result, paths, good),
        "seed": cfg.seed,
        "skipped_files": source.skipped_files,
        "extra_data": extra_report,
    }
    report["warnings"] = _warnings(cfg, report, source)
    if extra_report and extra_report["num_dropped"]:
        first = extra_report["dropped"][0]
        report["warnings"].append(
            f"{extra_report['num_dropped']} of {extra_report['num_read']} --extra-data-dir image(s) were "
            f"dropped (e.g. {first['path']}: {first['reason']}); see extra_data in the data report."
        )
    for warning in report["warnings"]:
        logger.warning(warning)
    if (refusal := _refusal(cfg, report)) is not None:
        write_outputs(cfg.output_dir, report, manifest)  # the report shows what is wrong
        raise DataError(refusal)

    split_data = _split_datasets(prepared, good, result)
    if extra_rows is not None:
        split_data["train"] = datasets.concatenate_datasets([split_data["train"], extra_rows])
    return PreparedData(split_data, list(class_label.names), pre, report, manifest)


def write_outputs(output_dir: str | Path, report: dict[str, Any], manifest: list[dict[str, Any]]) -> None:
    """Write ``data_report.json`` and ``split_manifest.csv`` into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    with (out / MANIFEST_FILE).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "group", "split"])
        writer.writeheader()
        writer.writerows(manifest)


def read_manifest(manifest: str | Path) -> list[dict[str, str]]:
    """The rows (path, label, group, split) of a training run's ``split_manifest.csv``; DataError for a
    CSV without those columns."""
    path = Path(manifest)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a split manifest (not readable as CSV: {err}).") from None
    if rows and not {"path", "label", "split"} <= set(rows[0]):
        raise DataError(f"{path}: not a split manifest (columns path, label, group, split expected).")
    return rows


def read_manifest_split(data: PreparedData, manifest: str | Path, split: str) -> datasets.Dataset:
    """The rows of ``data`` that a training run's ``split_manifest.csv`` put in ``split``, in its order.

    The run's split may have grouped near-duplicate shots with its pretrained backbone, which a later
    evaluation of the fine-tuned model cannot redo; reading the manifest evaluates exactly the run's
    images. Every listed image must be in ``data`` (prepared from the same source), or this refuses."""
    path = Path(manifest)
    wanted = [r["path"] for r in read_manifest(path) if r["split"] == split]
    everything = datasets.concatenate_datasets([data.splits[s] for s in SPLITS])
    row_of = {p: i for i, p in enumerate(everything["path"])}
    missing = [p for p in wanted if p not in row_of]
    if missing:
        raise DataError(
            f"{path} lists {len(missing)} {split} image(s) the data does not hold (e.g. {missing[0]}); "
            "pass the data flags the run was trained with (--data-dir or --dataset, --include-originals)."
        )
    return everything.select([row_of[p] for p in wanted])
