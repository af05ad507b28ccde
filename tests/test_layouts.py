"""Folder layouts: the supported ones give the classes and images a user means; every other one is
refused with one line naming the folder, before any image is prepared, or warned about in the report."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CLASSES, HASH_ONLY, jpeg_bytes, make_image_folder, photo
from trashnet_hf.core.config import DataConfig
from trashnet_hf.data import DataError, DataSourceError, prepare_data
from trashnet_hf.data.__main__ import main
from trashnet_hf.data.sources import read_source


def _cfg(data_dir: Path, tmp_path: Path, cache_dir: str, **kw) -> DataConfig:
    kw = {"image_size": 32, "num_proc": 1, **kw}
    return DataConfig(data_dir=str(data_dir), output_dir=str(tmp_path / "out"), cache_dir=cache_dir, **kw)


def _photos(folder: Path, n: int, seed: int, stem: str = "img", ext: str = ".jpg") -> list[Path]:
    """``n`` distinct photos in ``folder`` (seeds ``seed``..``seed + n - 1``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}{i}{ext}" for i in range(n)]
    for i, path in enumerate(paths):
        photo(seed + i).save(path)
    return paths


def _refused(cfg: DataConfig, cache_dir: str, match: str) -> str:
    """The one-line DataSourceError ``prepare_data`` raises; no image was prepared before it."""
    with pytest.raises(DataSourceError, match=match) as info:
        prepare_data(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert not (Path(cache_dir) / "trashnet_hf_prepared").exists()
    return message


def _label_of(data) -> dict[str, str]:
    return {r["path"]: r["label"] for r in data.manifest}


# --- Supported: images at any depth under a class folder -------------------------------------------------


def test_nested_subfolders_belong_to_their_class_folder(tmp_path: Path, cache_dir: str) -> None:
    root = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        _photos(root / name / "day1", 4, 1000 * c)
        _photos(root / name / "day2", 3, 1000 * c + 100)
        _photos(root / name / "day2" / "late", 1, 1000 * c + 200)  # deeper still
    data = prepare_data(_cfg(root, tmp_path, cache_dir))
    assert data.class_names == list(CLASSES)  # not day1/day2
    assert data.report["class_counts"] == dict.fromkeys(CLASSES, 8)
    assert data.report["num_images"] == data.report["num_kept"] == 24
    for path, label in _label_of(data).items():
        assert Path(path).relative_to(root).parts[0] == label
    assert data.report["warnings"] == []


def test_extensions_are_matched_in_any_case_and_hidden_files_are_skipped(
    tmp_path: Path, cache_dir: str
) -> None:
    root = make_image_folder(tmp_path / "data", per_class=6)
    _photos(root / "alpha", 1, 500, ext=".JPG")
    _photos(root / "beta", 1, 501, ext=".Png")
    (root / "alpha" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    _photos(root / "alpha" / ".ipynb_checkpoints", 2, 600)
    _photos(root / "__MACOSX" / "alpha", 2, 700)
    _photos(root / ".hidden_class", 3, 800)
    data = prepare_data(_cfg(root, tmp_path, cache_dir))
    assert data.class_names == list(CLASSES)
    assert data.report["class_counts"] == {"alpha": 7, "beta": 7, "gamma": 6}
    assert data.report["num_bad"] == 0 and data.report["skipped_files"] == []


def test_report_lists_class_counts_and_skipped_files(tmp_path: Path, cache_dir: str) -> None:
    root = tmp_path / "data"
    for c, (name, n) in enumerate(zip(CLASSES, (9, 6, 7), strict=True)):
        _photos(root / name, n, 1000 * c)
    (root / "README.md").write_text("about these photos\n")
    (root / "beta" / "notes.txt").write_text("taken in May\n")
    assert main([*HASH_ONLY, "--data-dir", str(root), "--output-dir", str(tmp_path / "out"),
                 "--image-size", "32", "--cache-dir", cache_dir, "--num-proc", "1"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["class_names"] == list(CLASSES)
    assert report["class_counts"] == {"alpha": 9, "beta": 6, "gamma": 7}
    assert sorted(Path(p).name for p in report["skipped_files"]) == ["README.md", "notes.txt"]
    # A stray file beside the classes is normal; one inside a class folder is worth a warning.
    assert len(report["warnings"]) == 1 and "notes.txt" in report["warnings"][0]


# --- Symlinks are followed -------------------------------------------------------------------------------


def test_a_symlinked_class_folder_and_file_are_read(tmp_path: Path, cache_dir: str) -> None:
    elsewhere = make_image_folder(tmp_path / "elsewhere")
    root = tmp_path / "data"
    root.mkdir()
    (root / "alpha").symlink_to(elsewhere / "alpha", target_is_directory=True)
    for name in ("beta", "gamma"):
        (root / name).mkdir()
        for f in sorted((elsewhere / name).iterdir()):
            (root / name / f.name).write_bytes(f.read_bytes())
    (root / "gamma" / "linked.jpg").symlink_to(_photos(tmp_path / "loose", 1, 9000)[0])
    data = prepare_data(_cfg(root, tmp_path, cache_dir))
    assert data.class_names == list(CLASSES)
    assert data.report["class_counts"] == {"alpha": 8, "beta": 8, "gamma": 9}
    assert data.report["num_bad"] == 0
    assert str(root / "gamma" / "linked.jpg") in _label_of(data)


def test_a_tree_of_symlinked_class_folders_is_read(tmp_path: Path, cache_dir: str) -> None:
    elsewhere = make_image_folder(tmp_path / "elsewhere")
    root = tmp_path / "data"
    root.mkdir()
    for name in CLASSES:
        (root / name).symlink_to(elsewhere / name, target_is_directory=True)
    (root / "alpha" / "loop").symlink_to(root, target_is_directory=True)  # must not walk for ever
    data = prepare_data(_cfg(root, tmp_path, cache_dir))
    assert data.class_names == list(CLASSES)
    assert data.report["class_counts"] == dict.fromkeys(CLASSES, 8)
    assert all(str(p).startswith(str(root)) for p in _label_of(data))  # paths as the user laid them out


# --- Refused before any image is prepared ---------------------------------------------------------------


def test_a_tree_split_in_advance_is_refused(tmp_path: Path, cache_dir: str) -> None:
    root = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        _photos(root / "train" / name, 6, 1000 * c)
        _photos(root / "test" / name, 2, 1000 * c + 100)
    message = _refused(_cfg(root, tmp_path, cache_dir), cache_dir, r"split in advance")
    assert "train/" in message and "test/" in message
    assert "alpha" in message and "merge" in message


def test_zips_beside_class_folders_are_refused_naming_both(tmp_path: Path, cache_dir: str) -> None:
    root = make_image_folder(tmp_path / "data")
    with zipfile.ZipFile(root / "extra.zip", "w") as z:
        z.writestr("extra/delta/delta0.jpg", jpeg_bytes(photo(77)))
    message = _refused(_cfg(root, tmp_path, cache_dir), cache_dir, r"both zips")
    assert "extra.zip" in message and "alpha/" in message


def test_an_empty_class_folder_is_refused_naming_it(tmp_path: Path, cache_dir: str) -> None:
    root = make_image_folder(tmp_path / "data")
    (root / "delta").mkdir()
    (root / "epsilon").mkdir()
    (root / "epsilon" / "labels.csv").write_text("a,b\n")
    message = _refused(_cfg(root, tmp_path, cache_dir), cache_dir, r"class folder\(s\) without images")
    assert "delta/ is empty" in message
    assert "epsilon/ holds 1 file(s), none an image (labels.csv)" in message


def test_images_outside_any_class_folder_are_refused(tmp_path: Path, cache_dir: str) -> None:
    root = make_image_folder(tmp_path / "data")
    _photos(root, 2, 5000, stem="loose")
    _refused(_cfg(root, tmp_path, cache_dir), cache_dir, r"2 image\(s\) sit directly .*loose0\.jpg")


def test_a_wrapper_folder_around_the_classes_is_refused(tmp_path: Path, cache_dir: str) -> None:
    make_image_folder(tmp_path / "data" / "dataset-resized")
    message = _refused(_cfg(tmp_path / "data", tmp_path, cache_dir), cache_dir, r"single folder")
    assert "dataset-resized" in message and "alpha" in message and "--data-dir" in message


def test_a_folder_without_images_is_refused(tmp_path: Path, cache_dir: str) -> None:
    root = tmp_path / "data"
    (root / "docs").mkdir(parents=True)
    (root / "notes.txt").write_text("nothing here\n")
    _refused(_cfg(root, tmp_path, cache_dir), cache_dir, r"no images found .*notes\.txt")


def test_the_refusal_is_one_line_and_exit_code_1(
    tmp_path: Path, cache_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        _photos(root / "train" / name, 2, 1000 * c)
    argv = [
        *HASH_ONLY,
        "--data-dir",
        str(root),
        "--output-dir",
        str(tmp_path / "out"),
        "--cache-dir",
        cache_dir,
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "train/" in err


# --- Classes too small for the split ---------------------------------------------------------------------


def test_a_class_too_small_for_every_split_is_warned_about(
    tmp_path: Path, cache_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_image_folder(tmp_path / "data")
    _photos(root / "delta", 1, 4000)
    _photos(root / "epsilon", 2, 4100)
    with caplog.at_level(logging.WARNING, logger="trashnet_hf.data"):
        data = prepare_data(_cfg(root, tmp_path, cache_dir))
    assert data.class_names == sorted([*CLASSES, "delta", "epsilon"])
    assert data.report["class_counts"] == {**dict.fromkeys(CLASSES, 8), "delta": 1, "epsilon": 2}
    assert {s: data.report["splits"][s]["delta"] for s in ("train", "val", "test")} == {
        "train": 1, "val": 0, "test": 0,
    }  # fmt: skip
    warnings = data.report["warnings"]
    assert len(warnings) == 2
    assert "'delta' has 1 usable image(s), too few for the val and test splits" in warnings[0]
    assert "'epsilon' has 2 usable image(s)" in warnings[1]
    assert "at least 5 distinct photos" in warnings[0]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] in logged and warnings[1] in logged


def test_classes_too_small_to_fill_val_and_test_are_refused(tmp_path: Path, cache_dir: str) -> None:
    root = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        _photos(root / name, 2, 1000 * c)
    with pytest.raises(DataError) as info:
        prepare_data(_cfg(root, tmp_path, cache_dir))
    message = str(info.value)
    assert "\n" not in message
    assert "the val and test splits would hold no images" in message
    assert "'alpha' 2, 'beta' 2, 'gamma' 2" in message
    assert "at least 5 distinct photos" in message and "--val-share 0.15" in message
    # The report of what was found is on disk.
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["class_counts"] == dict.fromkeys(CLASSES, 2) and len(report["warnings"]) == 3


def test_a_split_with_share_zero_may_be_empty(tmp_path: Path, cache_dir: str) -> None:
    root = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        _photos(root / name, 3, 1000 * c)
    data = prepare_data(_cfg(root, tmp_path, cache_dir, train_share=0.6, val_share=0.4, test_share=0.0))
    assert len(data.splits["test"]) == 0 and len(data.splits["val"]) == 3
    assert data.report["warnings"] == []


# --- The cache key ---------------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_follows_the_files(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data")
    first = read_source(str(root), "unused/unused").dataset
    assert read_source(str(root), "unused/unused").dataset._fingerprint == first._fingerprint
    assert first.features["image"].decode is False
    assert first[0]["image"] == {"path": str(root / "alpha" / "alpha0.jpg"), "bytes": None}
    photo(4242).save(root / "alpha" / "alpha0.jpg", quality=80)  # replaced in place, same path
    assert read_source(str(root), "unused/unused").dataset._fingerprint != first._fingerprint
