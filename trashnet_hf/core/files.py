"""Listing the files under a folder, and reading a JSON object a run wrote, for every wing alike.

The standard library only: serving (``predict``) lists folders too, and must not load the data stack
(``datasets``) to do it. Symlinked folders and files are followed; a link back up the tree is not followed
twice, and a link that leads nowhere (broken, or a loop such as ``a -> b -> a``, on which ``os.scandir``'s
``is_dir`` raises ELOOP) is listed as a file, so reading it later reports why, one file at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trashnet_hf.core.errors import UserError


class FolderError(UserError):
    """A folder that cannot be listed; the message names it and why."""


def read_json_object(path: Path, error: type[UserError], what: str, hint: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` (one line naming the file, ``what`` it should be and the
    ``hint``) when it cannot be read, is not JSON, or holds something else than an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path} is not readable JSON ({err}); {hint}") from None
    if not isinstance(value, dict):
        raise error(f"{path} is not {what} (a JSON object); {hint}")
    return value


def is_hidden(name: str) -> bool:
    """Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``) and macOS zip debris."""
    return name.startswith(".") or name == "__MACOSX"


def is_dir(entry: os.DirEntry[str]) -> bool:
    """Whether ``entry`` is a folder, symlinks followed; False for a link that leads nowhere."""
    try:
        return entry.is_dir()
    except OSError:  # ELOOP: a symlink loop is no folder to walk into
        return False


def scandir(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` in name order, hidden ones left out; FolderError if it cannot be read."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not is_hidden(e.name)), key=lambda e: e.name)
    except OSError as err:
        raise FolderError(f"{folder}: cannot be read ({err.strerror or err}).") from err


def walk(
    folder: Path, is_wanted: Callable[[str], bool], above: frozenset[Path] = frozenset()
) -> tuple[list[Path], list[Path]]:
    """Every file under ``folder`` at any depth, in name order, split into those whose name
    ``is_wanted`` (e.g. image files by extension) and the others. ``above``: the real paths of folders
    already being walked (a link back to one of them is not followed)."""
    wanted: list[Path] = []
    others: list[Path] = []
    _walk(folder, above | {Path(os.path.realpath(folder))}, is_wanted, wanted, others)
    return wanted, others


def _walk(
    folder: Path,
    ancestors: frozenset[Path],
    is_wanted: Callable[[str], bool],
    wanted: list[Path],
    others: list[Path],
) -> None:
    for entry in scandir(folder):
        path = folder / entry.name
        if is_dir(entry):
            real = Path(os.path.realpath(path))
            if real not in ancestors:  # a link back up the tree would never end
                _walk(path, ancestors | {real}, is_wanted, wanted, others)
        elif is_wanted(entry.name):  # a broken or looping link too: reading it reports why
            wanted.append(path)
        else:
            others.append(path)
