"""The data report: what preparation found and did (warnings, the reasons to refuse the data, the groups),
and the two files it leaves beside the prepared splits (``data_report.json``, ``split_manifest.csv``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from trashnet_hf.core.config import DataConfig
from trashnet_hf.core.manifest import MANIFEST_COLUMNS, MANIFEST_FILE
from trashnet_hf.data.sources import Source
from trashnet_hf.data.split import SPLITS, SplitResult, smallest_class

REPORT_FILE = "data_report.json"


def _splits(names: list[str]) -> str:
    """``val split`` or ``val and test splits``."""
    return f"{' and '.join(names)} split{'s' if len(names) > 1 else ''}"


def _kept(report: dict[str, Any]) -> dict[str, int]:
    """Each class's images kept in some split (duplicates grouped, label conflicts dropped)."""
    return {n: sum(counts[n] for counts in report["splits"].values()) for n in report["class_names"]}


def _needs(cfg: DataConfig) -> str:
    """How many photos a class needs at these shares, for the messages about small classes."""
    need = smallest_class(cfg.shares)
    shares = "/".join(f"{cfg.shares[s]:g}" for s in SPLITS)
    return f"{f'at least {need}' if need else 'more'} distinct photos at shares {shares}"


def warnings_of(cfg: DataConfig, report: dict[str, Any], source: Source) -> list[str]:
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


def refusal(cfg: DataConfig, report: dict[str, Any]) -> str | None:
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


def dropped_by_embedding(
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


def group_list(result: SplitResult, paths: list[str], good: np.ndarray) -> list[dict[str, Any]]:
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


def write_outputs(output_dir: str | Path, report: dict[str, Any], manifest: list[dict[str, Any]]) -> None:
    """Write ``data_report.json`` and ``split_manifest.csv`` into ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    with (out / MANIFEST_FILE).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(MANIFEST_COLUMNS))
        writer.writeheader()
        writer.writerows(manifest)
