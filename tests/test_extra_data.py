"""--extra-data-dir: extra images (the demo's corrections) join the train split only, deduplicated against
validation and test like any other image; the main split does not move."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from tests.conftest import photo
from trashnet_hf.core.config import ConfigError, DataConfig
from trashnet_hf.data import prepare_data
from trashnet_hf.data.sources import DataSourceError


def _cfg(data_dir: Path, tmp_path: Path, cache_dir: str, **kw) -> DataConfig:
    return DataConfig(
        data_dir=str(data_dir), output_dir=str(tmp_path / "out"), cache_dir=cache_dir, image_size=32, **kw
    )


def _row(manifest: list[dict], split: str, label: str) -> Path:
    return Path(next(r["path"] for r in manifest if r["split"] == split and r["label"] == label))


def test_extra_images_join_train_only_and_never_leak_val_or_test(
    image_folder: Path, tmp_path: Path, cache_dir: str
) -> None:
    base = prepare_data(_cfg(image_folder, tmp_path, cache_dir))
    extra = tmp_path / "feedback"
    for label in ("alpha", "gamma"):
        (extra / label).mkdir(parents=True)
    photo(5001).save(extra / "alpha" / "new1.jpg")  # new photos: kept
    photo(5002).save(extra / "gamma" / "new2.jpg")
    val_twin = _row(base.manifest, "val", "alpha")  # the same photo at another size: would leak val
    Image.open(val_twin).resize((256, 192)).save(extra / "alpha" / "val_twin.jpg")
    train_photo = _row(base.manifest, "train", "beta")  # a train photo under another label: a conflict
    Image.open(train_photo).save(extra / "gamma" / "relabelled.jpg")
    (extra / "alpha" / "broken.jpg").write_bytes(b"not a jpeg")
    (extra / "metadata.jsonl").write_text("{}\n")

    data = prepare_data(_cfg(image_folder, tmp_path, cache_dir, extra_data_dir=str(extra)))
    main_rows = [r for r in data.manifest if not r["path"].startswith(str(extra))]
    assert main_rows == base.manifest  # the main split did not move
    extra_rows = [r for r in data.manifest if r["path"].startswith(str(extra))]
    assert {(Path(r["path"]).name, r["label"], r["split"]) for r in extra_rows} == {
        ("new1.jpg", "alpha", "train"),
        ("new2.jpg", "gamma", "train"),
    }
    report = data.report["extra_data"]
    assert report["num_read"] == 5 and report["num_kept"] == 2 and report["num_dropped"] == 3
    assert report["kept_per_class"] == {"alpha": 1, "beta": 0, "gamma": 1}
    reasons = {Path(d["path"]).name: d["reason"] for d in report["dropped"]}
    assert reasons["val_twin.jpg"] == f"same photo as val image {val_twin}"
    assert reasons["relabelled.jpg"] == f"same photo as {train_photo}, labelled 'beta'"
    assert reasons["broken.jpg"].startswith("unreadable")
    assert report["skipped_files"] == [str(extra / "metadata.jsonl")]
    assert any("--extra-data-dir" in w for w in data.report["warnings"])
    # The counts and the train rows include the kept extra images, and nothing else changed.
    assert data.report["splits"]["train"]["alpha"] == base.report["splits"]["train"]["alpha"] + 1
    assert {s: data.report["splits"][s] for s in ("val", "test")} == {
        s: base.report["splits"][s] for s in ("val", "test")
    }
    assert len(data.splits["train"]) == len(base.splits["train"]) + 2
    assert {str(extra / "alpha" / "new1.jpg"), str(extra / "gamma" / "new2.jpg")} <= set(
        data.splits["train"]["path"]
    )
    for split in ("val", "test"):
        assert not [p for p in data.splits[split]["path"] if p.startswith(str(extra))]
    json.dumps(data.report)  # the report stays writable as JSON


def test_extra_data_layout_is_checked_up_front(image_folder: Path, tmp_path: Path, cache_dir: str) -> None:
    with pytest.raises(ConfigError, match="--extra-data-dir"):
        _cfg(image_folder, tmp_path, cache_dir, extra_data_dir=str(tmp_path / "missing"))
    extra = tmp_path / "extra"
    (extra / "banana").mkdir(parents=True)
    photo(1).save(extra / "banana" / "x.jpg")
    with pytest.raises(DataSourceError, match=r"banana.*not classes of the data"):
        prepare_data(_cfg(image_folder, tmp_path, cache_dir, extra_data_dir=str(extra)))
    (extra / "banana" / "x.jpg").rename(extra / "x.jpg")
    with pytest.raises(DataSourceError, match="outside any class folder"):
        prepare_data(_cfg(image_folder, tmp_path, cache_dir, extra_data_dir=str(extra)))


def test_a_reshot_of_a_val_photo_is_caught_by_the_embeddings(
    image_folder: Path, tmp_path: Path, cache_dir: str
) -> None:
    from tests.test_near_duplicates import MirrorThumbnail

    base = prepare_data(_cfg(image_folder, tmp_path, cache_dir), embedder=MirrorThumbnail())
    val_photo = _row(base.manifest, "val", "beta")
    extra = tmp_path / "feedback"
    (extra / "beta").mkdir(parents=True)
    ImageOps.mirror(Image.open(val_photo)).save(extra / "beta" / "turned.jpg")  # hash far, same object
    cfg = _cfg(image_folder, tmp_path, cache_dir, extra_data_dir=str(extra))
    assert prepare_data(cfg).report["extra_data"]["num_kept"] == 1  # control: the hash alone misses it
    report = prepare_data(cfg, embedder=MirrorThumbnail()).report["extra_data"]
    assert report["num_kept"] == 0
    assert report["dropped"] == [
        {"path": str(extra / "beta" / "turned.jpg"), "reason": f"same photo as val image {val_photo}"}
    ]
