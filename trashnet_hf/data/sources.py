"""Where images come from. Every source ends in a ``datasets.Dataset`` with an undecoded ``image``
column and a ``label`` ``ClassLabel``, read by datasets' ImageFolder builder (no hand-written reader).

1. a Hub dataset repo holding zips (``garythung/trashnet``): the zips are fetched with huggingface_hub,
   extracted, and read as class folders. A plain ``load_dataset`` of that repo is not used: it reads both
   zips into one 5,054-row split, and datasets 5.2 labels zip members by the folder holding the zip
   (huggingface/datasets#8419);
2. a local ImageFolder tree (``<class>/<image>``);
3. a local folder of zips laid out like the Hub repo: the offline twin of 1, from extraction on.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import datasets

from trashnet_hf import hub
from trashnet_hf.errors import UserError

logger = logging.getLogger(__name__)

RESIZED_ZIP = "dataset-resized.zip"
ORIGINAL_ZIP = "dataset-original.zip"


class DataSourceError(UserError):
    """The data source cannot be read; the message names the path and what to do."""


def _cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or datasets.config.HF_DATASETS_CACHE)


def extract_archives(zips: Sequence[Path], cache_dir: str | None = None) -> Path:
    """Extract zips into one cached folder (one subfolder per zip) and return it.

    The folder is keyed by the zips' paths, sizes and modification times, and written under a temporary
    name then renamed, so an interrupted extraction is never mistaken for a finished one.
    """
    key = hashlib.sha256()
    for z in sorted(Path(p).resolve() for p in zips):
        st = z.stat()
        key.update(f"{z}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    target = _cache_root(cache_dir) / "trashnet_hf_extracted" / key.hexdigest()[:16]
    if target.is_dir():
        logger.info("Reusing extracted archives in %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        for z in zips:
            logger.info("Extracting %s", z)
            try:
                with zipfile.ZipFile(z) as archive:
                    members = [m for m in archive.namelist() if not m.startswith("__MACOSX/")]
                    archive.extractall(tmp / Path(z).stem, members=members)
            except zipfile.BadZipFile as err:
                raise DataSourceError(f"{z}: not a readable zip archive ({err}).") from err
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def _image_folder(folder: Path, cache_dir: str | None) -> datasets.Dataset:
    try:
        ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train", cache_dir=cache_dir)
    except (FileNotFoundError, ValueError) as err:
        raise DataSourceError(
            f"{folder}: no images found in an ImageFolder layout (<class>/<image>): {err}"
        ) from err
    if "label" not in ds.features:
        raise DataSourceError(
            f"{folder}: images must sit in one folder per class (<class>/<image>); found no class folders."
        )
    return ds.cast_column("image", datasets.Image(decode=False))


def load_source(
    data_dir: str | None, dataset: str, include_originals: bool = False, cache_dir: str | None = None
) -> datasets.Dataset:
    """The raw dataset: ``image`` ({path, bytes}, undecoded) and ``label`` (ClassLabel) columns."""
    if data_dir is not None:
        folder = Path(data_dir)
        zips = sorted(folder.glob("*.zip"))
        if zips:
            logger.info("Reading %d archive(s) from %s (Hub layout)", len(zips), folder)
            return _image_folder(extract_archives(zips, cache_dir), cache_dir)
        logger.info("Reading ImageFolder tree %s", folder)
        return _image_folder(folder, cache_dir)

    files = [RESIZED_ZIP, ORIGINAL_ZIP] if include_originals else [RESIZED_ZIP]
    zips = hub.download_dataset_files(
        dataset,
        files,
        cache_dir=cache_dir,
        hint="pass --data-dir with a local copy: an ImageFolder tree (<class>/<image>) or a folder "
        f"holding {RESIZED_ZIP} as on the Hub",
    )
    return _image_folder(extract_archives(zips, cache_dir), cache_dir)
