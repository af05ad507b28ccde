"""The data pipeline end to end on synthetic folders: splits, twins, caching, outputs, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from tests.conftest import CLASSES, HASH_ONLY, make_hub_zips, make_image_folder
from trashnet_hf.core.config import DataConfig
from trashnet_hf.core.manifest import DROPPED
from trashnet_hf.data import prepare_data
from trashnet_hf.data.__main__ import main
from trashnet_hf.data.loader import decode_pixels, make_loader


def _cfg(data_dir: Path, tmp_path: Path, cache_dir: str, **kw) -> DataConfig:
    kw = {"image_size": 32, **kw}
    return DataConfig(data_dir=str(data_dir), output_dir=str(tmp_path / "out"), cache_dir=cache_dir, **kw)


def _by_photo(manifest: list[dict]) -> dict[tuple[str, str], set[str]]:
    """(label, file name) -> the splits its copies landed in."""
    out: dict[tuple[str, str], set[str]] = {}
    for row in manifest:
        out.setdefault((row["label"], Path(row["path"]).name), set()).add(row["split"])
    return out


def test_folder_is_prepared_and_split(image_folder: Path, tmp_path: Path, cache_dir: str) -> None:
    data = prepare_data(_cfg(image_folder, tmp_path, cache_dir, num_proc=1))
    assert data.class_names == list(CLASSES)
    assert data.report["num_images"] == 24 and data.report["num_bad"] == 0
    assert data.report["duplicate_groups"] == 0 and data.report["label_conflicts"] == []
    counts = {s: sum(data.report["splits"][s].values()) for s in ("train", "val", "test")}
    assert counts == {"train": 18, "val": 3, "test": 3}  # 8 per class: 5.6/1.2/1.2 -> 6/1/1
    batch = next(iter(make_loader(data.splits["train"], batch_size=4, shuffle=True)))
    assert batch["pixels"].shape == (4, 36, 36, 3) and batch["pixels"].dtype == torch.uint8
    assert batch["label"].dtype == torch.int64
    assert data.splits["train"].features["label"].names == list(CLASSES)


def test_hub_layout_twins_are_grouped_and_split_like_the_single_copy(tmp_path: Path, cache_dir: str) -> None:
    single = prepare_data(_cfg(make_image_folder(tmp_path / "single"), tmp_path, cache_dir, num_proc=1))
    hub = prepare_data(_cfg(make_hub_zips(tmp_path / "hub"), tmp_path, cache_dir, num_proc=2))

    assert hub.report["num_images"] == 48
    assert hub.report["duplicate_groups"] == 24  # every photo grouped with its twin, nothing else
    groups: dict[int, set[str]] = {}
    for row in hub.manifest:
        groups.setdefault(row["group"], set()).add(Path(row["path"]).parent.parent.name)
    assert all(roots == {"dataset-resized", "dataset-original"} for roots in groups.values())

    twins = _by_photo(hub.manifest)
    assert all(len(splits) == 1 for splits in twins.values())  # twins never straddle a split
    assert {k: v.pop() for k, v in twins.items()} == {
        k: v.pop() for k, v in _by_photo(single.manifest).items()
    }


def test_label_conflicts_are_dropped_and_reported(image_folder: Path, tmp_path: Path, cache_dir: str) -> None:
    # The same photo filed under two classes, as three TrashNet images are.
    (image_folder / "gamma" / "copy.jpg").write_bytes((image_folder / "alpha" / "alpha3.jpg").read_bytes())
    data = prepare_data(_cfg(image_folder, tmp_path, cache_dir, num_proc=1))
    conflicts = data.report["label_conflicts"]
    assert len(conflicts) == 1
    assert {Path(p).name for p in conflicts[0]} == {"alpha3.jpg", "copy.jpg"}
    kept = {Path(r["path"]).name for r in data.manifest if r["split"] != DROPPED}
    assert "alpha3.jpg" not in kept and "copy.jpg" not in kept
    # Listed as dropped, so that a run reusing the manifest (--split-manifest) leaves them out too.
    assert sorted(Path(r["path"]).name for r in data.manifest if r["split"] == DROPPED) == [
        "alpha3.jpg",
        "copy.jpg",
    ]
    assert data.report["num_kept"] == 23 and sum(data.report["splits"]["train"].values()) < 23


def test_same_seed_same_split_other_seed_other_split(
    image_folder: Path, tmp_path: Path, cache_dir: str
) -> None:
    def split_of(seed: int) -> list[tuple[str, str]]:
        data = prepare_data(_cfg(image_folder, tmp_path, cache_dir, num_proc=1, seed=seed))
        return [(r["path"], r["split"]) for r in data.manifest]

    assert split_of(1) == split_of(1)
    assert split_of(1) != split_of(2)


def test_second_run_reuses_the_datasets_cache(image_folder: Path, tmp_path: Path, cache_dir: str) -> None:
    cfg = _cfg(image_folder, tmp_path, cache_dir, num_proc=1)
    first = prepare_data(cfg).splits["train"]
    files = [f["filename"] for f in first.cache_files]
    mtimes = [Path(f).stat().st_mtime_ns for f in files]
    second = prepare_data(cfg).splits["train"]
    assert [f["filename"] for f in second.cache_files] == files
    assert [Path(f).stat().st_mtime_ns for f in files] == mtimes  # read back, not rewritten
    # A different image size is a different preparation, with its own cache file.
    other = prepare_data(_cfg(image_folder, tmp_path, cache_dir, num_proc=1, image_size=48)).splits["train"]
    assert [f["filename"] for f in other.cache_files] != files


def test_cli_writes_report_and_manifest(image_folder: Path, tmp_path: Path, cache_dir: str) -> None:
    out = tmp_path / "cli"
    argv = [*HASH_ONLY, "--data-dir", str(image_folder), "--output-dir", str(out), "--image-size", "32"]
    assert main([*argv, "--seed", "3", "--cache-dir", cache_dir, "--num-proc", "1"]) == 0
    report = json.loads((out / "data_report.json").read_text())
    for key in ("num_images", "num_bad", "bad_files", "duplicate_groups", "label_conflicts", "splits"):
        assert key in report
    assert set(report["splits"]) == {"train", "val", "test"}
    # At threshold 0 the hash alone groups, and the report says why.
    assert report["grouping"]["method"] == "perceptual hash" and report["groups"] == []
    assert report["grouping"]["hash_only_because"] == "--near-duplicate-threshold 0"
    rows = list(csv.DictReader((out / "split_manifest.csv").open()))
    assert len(rows) == 24 and set(rows[0]) == {"path", "label", "group", "split"}
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_loader_batches_match_the_stored_rows(image_folder: Path, tmp_path: Path, cache_dir: str) -> None:
    split = prepare_data(_cfg(image_folder, tmp_path, cache_dir, num_proc=1)).splits["train"]
    batches = list(make_loader(split, batch_size=5, shuffle=False))
    assert [len(b["label"]) for b in batches] == [5, 5, 5, 3]
    pixels = torch.cat([b["pixels"] for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    for i, row in enumerate(split):  # a selected split: the loader must honour the indices mapping
        assert torch.equal(pixels[i], torch.from_numpy(decode_pixels(row["pixels"]).copy()))
        assert labels[i] == row["label"]
