"""--split-manifest: a run reuses an earlier run's split exactly (photos matched by <class>/<file name>), and
is refused, naming the photos, where the data and the manifest disagree."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_image_folder, photo
from trashnet_hf.core.config import DataConfig
from trashnet_hf.core.errors import ConfigError, DataError
from trashnet_hf.core.manifest import DROPPED, MANIFEST_FILE
from trashnet_hf.data import PreparedData, prepare_data
from trashnet_hf.data.report import write_outputs


def _prepare(folder: Path, tmp_path: Path, name: str, **kw) -> PreparedData:
    cfg = DataConfig(
        data_dir=str(folder), output_dir=str(tmp_path / name), cache_dir=str(tmp_path / f"cache-{name}"),
        image_size=32, **kw,
    )  # fmt: skip
    data = prepare_data(cfg)
    write_outputs(cfg.output_dir, data.report, data.manifest)
    return data


def _by_key(manifest: list[dict]) -> dict[str, str]:
    return {f"{r['label']}/{Path(r['path']).name}": r["split"] for r in manifest}


def _groups(manifest: list[dict]) -> dict[str, int]:
    return {f"{r['label']}/{Path(r['path']).name}": int(r["group"]) for r in manifest}


def _partition(manifest: list[dict]) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for r in manifest:
        groups.setdefault(int(r["group"]), set()).add(f"{r['label']}/{Path(r['path']).name}")
    return {frozenset(g) for g in groups.values()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    data = make_image_folder(tmp_path / "data", per_class=10)
    photo(2003).resize((64, 48)).save(data / "gamma" / "gamma3-small.jpg", quality=90)  # a twin: one group
    shutil.copy(data / "alpha" / "alpha5.jpg", data / "beta" / "alpha5.jpg")  # a label conflict: dropped
    return data


def test_the_manifest_fixes_the_split_whatever_the_seed_and_wherever_the_data(
    folder: Path, tmp_path: Path
) -> None:
    first = _prepare(folder, tmp_path, "first", seed=1)
    assert _by_key(_prepare(folder, tmp_path, "other", seed=2).manifest) != _by_key(first.manifest)
    # The dropped pair is listed as such, so a reuse leaves out exactly the same photos.
    assert {k for k, s in _by_key(first.manifest).items() if s == DROPPED} == {
        "alpha/alpha5.jpg",
        "beta/alpha5.jpg",
    }

    moved = shutil.copytree(folder, tmp_path / "moved")  # the same photos in another folder
    manifest = tmp_path / "first" / MANIFEST_FILE
    reused = _prepare(moved, tmp_path, "reused", seed=2, split_manifest=str(manifest))
    assert _by_key(reused.manifest) == _by_key(first.manifest)
    assert _partition(reused.manifest) == _partition(first.manifest)
    assert _groups(reused.manifest) == _groups(first.manifest)  # the very group ids, not only the groups
    assert reused.report["splits"] == first.report["splits"]
    assert reused.report["num_kept"] == first.report["num_kept"] == 3 * 10 + 2 - 2
    assert len(reused.report["label_conflicts"]) == 1
    assert reused.report["grouping"]["method"] == "reused from a split manifest"
    # How the split was grouped travels with it: the maker's data report, written beside the manifest.
    assert reused.report["grouping"]["made_by"] == first.report["grouping"]
    # Reusing the reuse's manifest still names the maker's grouping.
    chained = _prepare(moved, tmp_path, "chained", split_manifest=str(tmp_path / "reused" / MANIFEST_FILE))
    assert chained.report["grouping"]["made_by"] == first.report["grouping"]
    (tmp_path / "first" / "data_report.json").write_text("{")  # damaged: the split still holds, unrecorded
    assert (
        _prepare(moved, tmp_path, "again", split_manifest=str(manifest)).report["grouping"]["made_by"] is None
    )
    for split in ("train", "val", "test"):
        names = {f"{Path(p).parent.name}/{Path(p).name}" for p in reused.splits[split]["path"]}
        assert names == {k for k, s in _by_key(first.manifest).items() if s == split}


def test_a_listed_photo_the_data_lacks_is_refused_by_name_before_any_image_is_prepared(
    folder: Path, tmp_path: Path
) -> None:
    _prepare(folder, tmp_path, "first")
    (folder / "gamma" / "gamma7.jpg").unlink()
    with pytest.raises(DataError, match=r"lists 1 photo\(s\) the data does not hold \(gamma/gamma7\.jpg\)"):
        _prepare(folder, tmp_path, "again", split_manifest=str(tmp_path / "first" / MANIFEST_FILE))
    assert not list((tmp_path / "cache-again").rglob("prepared-*.arrow"))


def test_a_photo_the_manifest_does_not_list_is_refused_by_name(folder: Path, tmp_path: Path) -> None:
    _prepare(folder, tmp_path, "first")
    photo(4242).save(folder / "beta" / "new.jpg", quality=90)
    with pytest.raises(DataError, match=r"does not list 1 photo\(s\) of the data \(beta/new\.jpg\)"):
        _prepare(folder, tmp_path, "again", split_manifest=str(tmp_path / "first" / MANIFEST_FILE))


def test_a_photo_listed_in_two_splits_is_refused(folder: Path, tmp_path: Path) -> None:
    _prepare(folder, tmp_path, "first")
    rows = list(csv.DictReader((tmp_path / "first" / MANIFEST_FILE).open()))
    twin = dict(rows[0], path=str(tmp_path / "elsewhere" / Path(rows[0]["path"]).name))
    twin["split"] = "test" if rows[0]["split"] != "test" else "train"
    edited = tmp_path / "edited.csv"
    with edited.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([*rows, twin])
    with pytest.raises(DataError, match="listed in two splits"):
        _prepare(folder, tmp_path, "again", split_manifest=str(edited))


def test_bad_split_manifest_values_are_refused_naming_the_flag(folder: Path, tmp_path: Path) -> None:
    base = {"data_dir": str(folder), "output_dir": str(tmp_path / "out")}
    with pytest.raises(ConfigError, match=r"--split-manifest: .* is not a file"):
        DataConfig(**base, split_manifest=str(tmp_path / "missing.csv"))
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match=r"--split-manifest: .*not a split manifest"):
        DataConfig(**base, split_manifest=str(tmp_path / "binary.csv"))
    _prepare(folder, tmp_path, "first")
    with pytest.raises(ConfigError, match="--split-manifest cannot be combined with --extra-data-dir"):
        DataConfig(**base, split_manifest=str(tmp_path / "first" / MANIFEST_FILE), extra_data_dir=str(folder))
