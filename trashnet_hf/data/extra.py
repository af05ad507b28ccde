"""Extra training images (``--extra-data-dir``), such as the demo's corrections (``serving.feedback``).

They go to the train split only, never to validation or test. The main split is made first, without them,
so adding extra images never moves a main image between splits. Then each extra image is grouped with the
main images exactly as those are grouped with each other (perceptual hash, plus backbone embeddings when
training has a backbone, ``near_duplicates``): one whose group holds a validation or test image would leak
that held-out photo into training, and one whose group holds an image of another class contradicts a
label; both are dropped and reported, as are unreadable files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from trashnet_hf.core import files
from trashnet_hf.data.sources import DataSourceError, _from_files, _scandir, _walk, is_image_name
from trashnet_hf.data.split import join_pairs


@dataclass
class ExtraImages:
    """The listed extra images (``image`` undecoded, ``label`` with the main data's class names) and the
    files skipped because they are not images by their extension (e.g. the feedback's metadata.jsonl)."""

    folder: Path
    dataset: datasets.Dataset
    skipped_files: list[str]


def read_extra(folder: str | Path, class_names: Sequence[str]) -> ExtraImages:
    """List ``folder/<class>/**/<image>``. Every class folder must name a class of the main data (a handful
    of corrections cannot teach a new class, and a typo would become one); refused otherwise, as is a
    folder without images or with images outside any class folder."""
    root = Path(folder).absolute()
    paths: list[Path] = []
    labels: list[int] = []
    skipped: list[str] = []
    unknown: list[str] = []
    for entry in _scandir(root):
        path = root / entry.name
        if not files.is_dir(entry):  # a symlink loop is no folder
            if is_image_name(entry.name):
                raise DataSourceError(
                    f"--extra-data-dir: {path} sits outside any class folder; move it into {root}/<class>/."
                )
            skipped.append(str(path))
            continue
        images: list[Path] = []
        others: list[Path] = []
        _walk(path, frozenset({root.resolve()}), images, others)
        skipped += [str(p) for p in others]
        if entry.name not in class_names:
            if images:
                unknown.append(entry.name)
            continue
        paths += images
        labels += [list(class_names).index(entry.name)] * len(images)
    if unknown:
        raise DataSourceError(
            f"--extra-data-dir: {root} has folder(s) {', '.join(sorted(unknown))} that are not classes of "
            f"the data ({', '.join(class_names)}); rename or remove them."
        )
    if not paths:
        raise DataSourceError(f"--extra-data-dir: no images in {root}/<class>/ for any class of the data.")
    return ExtraImages(root, _from_files(paths, labels, list(class_names)), skipped)


@dataclass
class ExtraFate:
    """Per extra image: "train", or "" with the reason it was dropped; ``group``: the main group it joins
    (a train group holding the same photo) or a new id past the main ones."""

    split: list[str]
    reason: list[str | None]
    group: list[int]


def extra_fate(
    n_main: int,
    main_split: Sequence[str],
    main_group: np.ndarray,
    labels: Sequence[int],
    paths: Sequence[str],
    pairs: Sequence[np.ndarray],
    class_names: Sequence[str],
) -> ExtraFate:
    """Where each extra image goes. The rows are the ``n_main`` readable main images followed by the
    readable extra ones; ``labels``/``paths`` cover both, ``main_split``/``main_group`` the main ones ("" for
    a main image dropped as a label conflict); ``pairs`` link any two rows (hash and embedding pairs)."""
    n = len(labels)
    component = join_pairs(n, *pairs)
    members: dict[int, list[int]] = {}
    for k, c in enumerate(component.tolist()):
        members.setdefault(c, []).append(k)
    fate = ExtraFate([], [], [])
    next_group = int(main_group.max()) + 1 if len(main_group) else 0
    new_group: dict[int, int] = {}
    for x in range(n_main, n):
        group = members[int(component[x])]
        held = [k for k in group if k < n_main and main_split[k] in ("val", "test")]
        other = [k for k in group if labels[k] != labels[x]]
        if held:
            reason = f"same photo as {main_split[held[0]]} image {paths[held[0]]}"
        elif other:
            reason = f"same photo as {paths[other[0]]}, labelled {class_names[labels[other[0]]]!r}"
        else:
            reason = None
        train = [k for k in group if k < n_main and main_split[k] == "train"]
        if train:
            gid = int(main_group[train[0]])
        else:
            gid = new_group.setdefault(int(component[x]), next_group + len(new_group))
        fate.split.append("" if reason else "train")
        fate.reason.append(reason)
        fate.group.append(gid)
    return fate
