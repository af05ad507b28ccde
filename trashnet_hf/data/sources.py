"""Where images come from. Every source ends in a ``datasets.Dataset`` with an undecoded ``image``
column and a ``label`` ``ClassLabel``.

1. a Hub dataset repo holding zips (``garythung/trashnet``): the zips are fetched with huggingface_hub,
   extracted, and read as class folders by datasets' ImageFolder builder. A plain ``load_dataset`` of that
   repo is not used: it reads both zips into one 5,054-row split, and datasets 5.2 labels zip members by
   the folder holding the zip (huggingface/datasets#8419);
2. a local folder of zips laid out like the Hub repo (``D/*.zip``, ``<root>/<class>/<image>`` inside each):
   the offline twin of 1, from extraction on;
3. a local class-folder tree (``D/<class>/...``): listed here, not by the ImageFolder builder, because
   that builder labels an image by the folder directly holding it (``D/glass/day1/x.jpg`` would be class
   "day1"), skips symlinked folders, and gives any stray zip precedence over the folders. Here an image at
   any depth under ``D/<class>/`` is of that class, symlinks are followed, and every layout that cannot
   mean what it seems to (a tree split in advance, zips beside class folders, images outside any class
   folder, an empty class folder, one wrapper folder around the classes) is refused with a one-line
   ``DataSourceError`` before any image is decoded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from datasets.fingerprint import Hasher
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

from trashnet_hf.core import files
from trashnet_hf.core.errors import UserError
from trashnet_hf.hub import client as hub

logger = logging.getLogger(__name__)

RESIZED_ZIP = "dataset-resized.zip"
ORIGINAL_ZIP = "dataset-original.zip"

# The extensions datasets' ImageFolder builder reads (those PIL opens), so both routes take the same files.
IMAGE_EXTENSIONS = frozenset(ext.lower() for ext in ImageFolder.EXTENSIONS)

# Top-level folder names that mean "split in advance" when they hold class folders.
SPLIT_FOLDER_NAMES = frozenset({"train", "training", "val", "valid", "validation", "dev", "test", "testing"})


class DataSourceError(UserError):
    """The data source cannot be read; the message names the path and what to do."""


@dataclass
class Source:
    """The raw dataset and what was left out of it while listing (files that are not images)."""

    dataset: datasets.Dataset
    skipped_files: list[str] = field(default_factory=list)
    # The skipped files that sat inside class folders (worth a warning, unlike a README beside them).
    skipped_in_classes: list[str] = field(default_factory=list)


def _cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or datasets.config.HF_DATASETS_CACHE)


def _some(items: Sequence[str], limit: int = 4) -> str:
    """``a, b, c`` or ``a, b, c, d, ... (9 in all)``: a list short enough for a one-line message."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all)"


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


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
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:  # zlib: a damaged deflate stream
                raise DataSourceError(f"{z}: not a readable zip archive ({err}).") from err
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def _image_folder(folder: Path, cache_dir: str | None) -> datasets.Dataset:
    """Extracted Hub-layout zips (``<zip>/<root>/<class>/<image>``), read by datasets' ImageFolder."""
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


# --- The class-folder tree ------------------------------------------------------------------------------


@dataclass
class _Folder:
    """One top-level folder of the tree: its images at any depth and the files that are not images."""

    path: Path
    images: list[Path]
    others: list[Path]

    @property
    def direct_images(self) -> int:
        return sum(1 for p in self.images if p.parent == self.path)

    @property
    def image_subfolders(self) -> list[str]:
        """The immediate subfolders holding images (at any depth below them)."""
        names = {p.relative_to(self.path).parts[0] for p in self.images if p.parent != self.path}
        return sorted(names)


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return files.scandir(folder)
    except files.FolderError as err:
        raise DataSourceError(str(err)) from None


def _walk(folder: Path, above: frozenset[Path], images: list[Path], others: list[Path]) -> None:
    """Every file under ``folder`` at any depth (``files.walk``: symlinks followed without looping, a link
    that leads nowhere listed as a file, hidden entries skipped, name order): image files (by extension)
    into ``images`` (a broken link too: decoding reports it as a bad file), the rest into ``others``."""
    try:
        found, rest = files.walk(folder, is_image_name, above)
    except files.FolderError as err:
        raise DataSourceError(str(err)) from None
    images += found
    others += rest


def _describe(entries: list[os.DirEntry[str]]) -> str:
    if not entries:
        return "it is empty (hidden files aside)"
    dirs = [f"{e.name}/" for e in entries if files.is_dir(e)]
    others = [e.name for e in entries if not files.is_dir(e)]
    return "found " + "; ".join(s for s in (_some(dirs), _some(others)) if s)


@dataclass
class _Listing:
    """The top level of a data folder: its entries, the zips, the images and other files directly in it,
    and its folders (each listed at any depth)."""

    entries: list[os.DirEntry[str]]
    zips: list[Path] = field(default_factory=list)
    root_images: list[str] = field(default_factory=list)
    root_others: list[Path] = field(default_factory=list)
    folders: list[_Folder] = field(default_factory=list)

    @property
    def classes(self) -> list[_Folder]:
        """The folders holding images: the classes, if the layout is right."""
        return [f for f in self.folders if f.images]


def _list_root(root: Path) -> _Listing:
    """Sort ``root``'s entries into zips, images, other files and folders (listed at any depth)."""
    listing = _Listing(_scandir(root))
    for entry in listing.entries:
        path = root / entry.name
        if files.is_dir(entry):
            images: list[Path] = []
            others: list[Path] = []
            _walk(path, frozenset({root.resolve()}), images, others)
            listing.folders.append(_Folder(path, images, others))
        elif entry.is_symlink() and not path.exists():
            raise DataSourceError(
                f"{path}: broken symlink (to {path.readlink()}); fix it or remove it from {root}."
            )
        elif entry.name.lower().endswith(".zip"):
            listing.zips.append(path)
        elif is_image_name(entry.name):
            listing.root_images.append(entry.name)
        else:
            listing.root_others.append(path)
    return listing


def _read_zips(root: Path, listing: _Listing, cache_dir: str | None) -> Source:
    """The Hub-layout zips in ``root``, refused when images sit beside them."""
    classes, zips = listing.classes, listing.zips
    if classes or listing.root_images:
        beside = _some([f"{f.path.name}/" for f in classes] + listing.root_images)
        raise DataSourceError(
            f"{root} holds both zips ({_some([z.name for z in zips])}) and images ({beside}); pass one "
            "layout: move the zips out to read the class folders, or the images out to read the zips."
        )
    logger.info("Reading %d archive(s) from %s (Hub layout)", len(zips), root)
    others = [str(p) for p in listing.root_others] + [str(p) for f in listing.folders for p in f.others]
    return Source(_image_folder(extract_archives(zips, cache_dir), cache_dir), skipped_files=others)


def _refuse_misplaced_images(root: Path, listing: _Listing) -> None:
    """Refuse a tree without images, with images outside any class folder, split in advance, or wrapped
    in one folder."""
    classes, root_images = listing.classes, listing.root_images
    if not classes and not root_images:
        raise DataSourceError(
            f"{root}: no images found ({_describe(listing.entries)}); expected class folders "
            f"{root}/<class>/<images> or Hub-layout zips {root}/*.zip."
        )
    if root_images:
        raise DataSourceError(
            f"{root}: {len(root_images)} image(s) sit directly in the data folder, outside any class folder "
            f"({_some(root_images)}); move them into {root}/<class>/ (the folder name is the label)."
        )
    pre_split = [f for f in classes if f.path.name.casefold() in SPLIT_FOLDER_NAMES and f.image_subfolders]
    if pre_split:
        inner = sorted({name for f in pre_split for name in f.image_subfolders})
        example = " and ".join(f"{f.path.name}/{inner[0]}/*" for f in pre_split)
        raise DataSourceError(
            f"{root} is split in advance ({', '.join(f'{f.path.name}/' for f in pre_split)} hold class "
            f"folders {_some(inner)}); the split is made here, duplicate-aware, by --train-share/--val-share/"
            f"--test-share: merge them into one tree {root}/<class>/ (e.g. "
            f"{example} into {inner[0]}/) and pass that."
        )
    if len(classes) == 1 and classes[0].direct_images == 0:
        only = classes[0]
        raise DataSourceError(
            f"{root} holds a single folder, {only.path.name}/, with all its images in subfolders "
            f"({_some(only.image_subfolders)}): that is one class named {only.path.name!r}. If the "
            f"subfolders are the classes, pass --data-dir {only.path}."
        )


def _refuse_too_few_classes(root: Path, listing: _Listing) -> None:
    """Refuse a tree of a single class, or with a class folder that holds no image."""
    classes = listing.classes
    if len(classes) == 1:
        raise DataSourceError(
            f"{root} holds one class folder ({classes[0].path.name}/); a classifier needs at least two: "
            f"add a folder per class, {root}/<class>/<images>."
        )
    empty = [f for f in listing.folders if not f.images]
    if empty:
        found = "; ".join(
            f"{f.path.name}/ holds {len(f.others)} file(s), none an image "
            f"({_some([p.name for p in f.others], 2)})"
            if f.others
            else f"{f.path.name}/ is empty"
            for f in empty
        )
        raise DataSourceError(
            f"{root}: class folder(s) without images: {found}; a class needs images (.jpg, .png, .webp, "
            "...) to be learnt: add some, or remove the folder."
        )


def _read_tree(root: Path, cache_dir: str | None) -> Source:
    """List ``root/<class>/**/<image>``, check the layout, and build the dataset (no image is opened)."""
    listing = _list_root(root)
    if listing.zips:
        return _read_zips(root, listing, cache_dir)
    _refuse_misplaced_images(root, listing)
    _refuse_too_few_classes(root, listing)

    classes = listing.classes
    names = [f.path.name for f in classes]  # already in name order
    paths = [p for f in classes for p in f.images]
    labels = [k for k, f in enumerate(classes) for _ in f.images]
    logger.info("Read the class-folder tree %s: %d images in %d classes", root, len(paths), len(names))
    skipped_in = [str(p) for f in listing.folders for p in f.others]
    return Source(
        _from_files(paths, labels, names),
        skipped_files=[str(p) for p in listing.root_others] + skipped_in,
        skipped_in_classes=skipped_in,
    )


def _from_files(paths: list[Path], labels: list[int], names: list[str]) -> datasets.Dataset:
    """The dataset of listed files, with a fingerprint of the paths, labels, sizes and modification times:
    the same files give the same fingerprint (the prepared images are read from the cache), and an image
    replaced in place gives another."""
    features = datasets.Features(
        {"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=names)}
    )
    files = [str(p) for p in paths]
    ds = datasets.Dataset.from_dict({"image": files, "label": labels}, features=features)
    stats = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:  # a broken link: decoding will report it
            st = p.lstat()
        stats.append((st.st_size, st.st_mtime_ns))
    fingerprint = Hasher.hash(["trashnet_hf.class-folder-tree/1", names, files, labels, stats])
    return datasets.Dataset(ds.data, info=ds.info, fingerprint=fingerprint)


# --- Entry points ----------------------------------------------------------------------------------------


def read_source(
    data_dir: str | None, dataset: str, include_originals: bool = False, cache_dir: str | None = None
) -> Source:
    """The raw dataset (``image``: {path, bytes}, undecoded; ``label``: ClassLabel) and the skipped files.

    Raises ``DataSourceError`` (one line) for a layout that cannot mean what it seems to.
    """
    if data_dir is not None:
        return _read_tree(Path(data_dir).absolute(), cache_dir)

    files = [RESIZED_ZIP, ORIGINAL_ZIP] if include_originals else [RESIZED_ZIP]
    zips = hub.download_dataset_files(
        dataset,
        files,
        cache_dir=cache_dir,
        hint="pass --data-dir with a local copy: a class-folder tree (<class>/<image>) or a folder "
        f"holding {RESIZED_ZIP} as on the Hub",
    )
    return Source(_image_folder(extract_archives(zips, cache_dir), cache_dir))
