"""Data preparation: source -> ``datasets`` -> decoded, resized, hashed -> duplicate-aware splits.

Knows nothing of the model: the only shared piece is ``core.preprocessing``, the image geometry. To
group near-duplicate shots, the caller may pass an ``Embedder`` (a protocol: the entry points pass the
fixed reference embedder of ``trashnet_hf.core.embedder``, the same for every model).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.fingerprint import Hasher

from trashnet_hf.core import decoding
from trashnet_hf.core.config import DataConfig
from trashnet_hf.core.errors import DataError
from trashnet_hf.core.manifest import DROPPED, read_manifest
from trashnet_hf.core.preprocessing import Preprocessing
from trashnet_hf.data import images
from trashnet_hf.data.extra import ExtraImages, extra_fate, read_extra
from trashnet_hf.data.images import prepare_batch
from trashnet_hf.data.near_duplicates import Embedder, embed_dataset, embedding_pairs
from trashnet_hf.data.report import dropped_by_embedding, group_list, refusal, warnings_of, write_outputs
from trashnet_hf.data.reuse import check_listed, grouping_made_by, manifest_key, read_split, reused_split
from trashnet_hf.data.sources import Source, read_source
from trashnet_hf.data.split import (
    SPLITS,
    SplitResult,
    hash_pairs,
    join_pairs,
    split_fingerprint,
    split_groups,
)

logger = logging.getLogger(__name__)


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
            else "no embedder was passed to prepare_data"
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


@dataclass
class _MainSplit:
    """The main images, prepared and split: their metadata (``path``, ``label``, ``phash``, ``error`` per
    row), the unreadable files, the readable rows (``good``), their groups and split, and the report's
    ``grouping`` entry."""

    meta: dict[str, list]
    bad_files: list[dict[str, str]]
    good: np.ndarray
    result: SplitResult
    grouping: dict[str, Any]


def _split_main(
    cfg: DataConfig, raw: datasets.Dataset, prepared: datasets.Dataset, embedder: Embedder | None,
    reused: dict[str, tuple[int, str]] | None = None,
) -> _MainSplit:  # fmt: skip
    """Set the unreadable images aside, group the readable ones and split the groups (or take both from
    ``reused``, the ``--split-manifest``'s)."""
    class_label: datasets.ClassLabel = raw.features["label"]
    meta = prepared.data.select(["path", "label", "phash", "error"]).to_pydict()
    paths, labels, hashes, errors = meta["path"], meta["label"], meta["phash"], meta["error"]

    bad_files = [{"path": p, "reason": e} for p, e in zip(paths, errors, strict=True) if e is not None]
    good = np.array([i for i, e in enumerate(errors) if e is None], dtype=np.int64)
    for bad in bad_files:
        logger.warning("Skipping unreadable image %s: %s", bad["path"], bad["reason"])

    keys = [manifest_key(paths[i], class_label.int2str(labels[i])) for i in good]
    if reused is not None:  # --split-manifest: the earlier run's groups and splits, nothing recomputed
        result = reused_split(cfg.split_manifest, reused, keys)
        grouping = {
            "method": "reused from a split manifest",
            "split_manifest": Path(cfg.split_manifest).name,
            "made_by": grouping_made_by(cfg.split_manifest),  # the grouping of the run that made it
        }
        return _MainSplit(meta, bad_files, good, result, grouping | {"dropped_by_embedding": None})
    group, hash_group, grouping = _grouping(cfg, raw, good, hashes, embedder)
    good_labels = [labels[i] for i in good]
    result = split_groups(group, good_labels, keys, cfg.shares, cfg.seed, class_label.names)
    grouping["dropped_by_embedding"] = dropped_by_embedding(result, hash_group, good_labels, paths, good)
    return _MainSplit(meta, bad_files, good, result, grouping)


def _manifest(main: _MainSplit, class_label: datasets.ClassLabel) -> list[dict[str, Any]]:
    """The manifest rows (path, label, group, split) of the readable main images; those left out of every
    split (label conflicts) have the split ``DROPPED``."""
    paths, labels, result = main.meta["path"], main.meta["label"], main.result
    return [
        {
            "path": paths[i],
            "label": class_label.int2str(labels[i]),
            "group": int(result.group[k]),
            "split": result.split[k] or DROPPED,
        }
        for k, i in enumerate(main.good)
    ]


def _report(
    cfg: DataConfig, source: Source, pre: Preprocessing, main: _MainSplit,
    manifest: list[dict[str, Any]], extra_report: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """The data report (``data_report.json``), its warnings included."""
    class_label: datasets.ClassLabel = source.dataset.features["label"]
    paths, labels, good, result = main.meta["path"], main.meta["label"], main.good, main.result
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
        "num_bad": len(main.bad_files),
        "bad_files": main.bad_files,
        "duplicate_groups": int((group_sizes > 1).sum()),
        "label_conflicts": [[paths[good[k]] for k in members] for members in result.conflicts],
        "num_kept": sum(r["split"] != DROPPED for r in manifest),
        "splits": splits,
        # What evaluation checks the run's split_manifest.csv against (it must be the split trained on).
        "split_fingerprint": split_fingerprint(manifest),
        "preprocessing": pre.to_dict(),
        "hash": {"size": cfg.hash_size, "threshold": cfg.hash_threshold},
        "grouping": main.grouping,
        "groups": group_list(result, paths, good),
        "seed": cfg.seed,
        "skipped_files": source.skipped_files,
        "extra_data": extra_report,
    }
    report["warnings"] = warnings_of(cfg, report, source)
    if extra_report and extra_report["num_dropped"]:
        first = extra_report["dropped"][0]
        report["warnings"].append(
            f"{extra_report['num_dropped']} of {extra_report['num_read']} --extra-data-dir image(s) were "
            f"dropped (e.g. {first['path']}: {first['reason']}); see extra_data in the data report."
        )
    return report


def _read_reused(cfg: DataConfig, raw: datasets.Dataset) -> dict[str, tuple[int, str]]:
    """The ``--split-manifest``'s split, refused before any image is decoded if it lists a photo the data
    lacks."""
    split_of = read_split(cfg.split_manifest)
    names = raw.features["label"].names
    # The paths from the image column's Arrow struct: no image is decoded or copied.
    paths = raw.data.column("image").combine_chunks().field("path").to_pylist()
    labels = raw.data.column("label").to_pylist()
    keys = [manifest_key(p or images.NO_PATH, names[y]) for p, y in zip(paths, labels, strict=True)]
    check_listed(cfg.split_manifest, split_of, keys)
    return split_of


def prepare_data(
    cfg: DataConfig, preprocessing: Preprocessing | None = None, embedder: Embedder | None = None
) -> PreparedData:
    """Read, prepare (cached by the datasets fingerprint) and split the configured dataset, at the geometry
    of ``preprocessing`` (the model's, from the caller; default: what ``cfg``'s flags alone set).

    With ``embedder`` (the entry points pass ``core.embedder.grouping_embedder``'s), near-duplicate shots
    are grouped with the perceptual-hash twins (``near_duplicates``); without it, the hash alone groups."""
    pre = preprocessing or cfg.preprocessing
    source = read_source(cfg.data_dir, cfg.dataset, cfg.include_originals, cfg.cache_dir)
    class_label: datasets.ClassLabel = source.dataset.features["label"]
    # Listed now (cheap) so that a bad --extra-data-dir fails before any image is decoded.
    extra = read_extra(cfg.extra_data_dir, class_label.names) if cfg.extra_data_dir else None
    reused = _read_reused(cfg, source.dataset) if cfg.split_manifest else None
    prepared = _prepare_images(cfg, source.dataset, pre)
    main = _split_main(cfg, source.dataset, prepared, embedder, reused)
    manifest = _manifest(main, class_label)
    extra_rows, extra_report = None, None
    if extra is not None:  # train only, after the main split: the main images never move
        extra_rows, extra_manifest, extra_report = _fold_extra(
            cfg, extra, pre, embedder, (source.dataset, main.meta, main.good, main.result)
        )
        manifest += extra_manifest
    report = _report(cfg, source, pre, main, manifest, extra_report)
    for warning in report["warnings"]:
        logger.warning(warning)
    if (why := refusal(cfg, report)) is not None:
        write_outputs(cfg.output_dir, report, manifest)  # the report shows what is wrong
        raise DataError(why)

    split_data = _split_datasets(prepared, main.good, main.result)
    if extra_rows is not None:
        split_data["train"] = datasets.concatenate_datasets([split_data["train"], extra_rows])
    return PreparedData(split_data, list(class_label.names), pre, report, manifest)


def read_manifest_split(data: PreparedData, manifest: str | Path, split: str) -> datasets.Dataset:
    """The rows of ``data`` that a training run's ``split_manifest.csv`` put in ``split``, in its order.

    The run's split may have grouped near-duplicate shots with its pretrained backbone, which a later
    evaluation of the fine-tuned model cannot redo; reading the manifest evaluates exactly the run's
    images. Every listed image must be in ``data`` (prepared from the same source), or this refuses
    (``ManifestError`` for a file that is not a manifest, ``DataError`` for images the data lacks)."""
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
