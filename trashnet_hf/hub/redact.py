"""What publishing may upload: no local path and no secret.

A run's results.json records where things were on this machine: the data, output and cache folders, a
local backbone, and every bad or skipped file, group member and label conflict, some inside warning
sentences. ``Redactor`` knows the folders such paths start from (the roots: every local path the run's
config names, the folder being published, the project checkout, the Hugging Face caches and HOME) and
rewrites every string of a JSON structure or text by them, whatever its key: a path inside a root becomes
relative to it (``glass/glass12.jpg``; inside HOME, ``~/...``), a root itself its folder name. Nothing is
guessed beyond that: afterwards, any absolute path, any string still holding a root and any secret value
is refused with one line naming the file and key, so a new field cannot leak silently.

``Redactor.audit`` then reads every file of a build as bytes (weights, plots and code too) for the
roots and for the values of the environment's secrets (HF_TOKEN, WANDB_API_KEY, any ``*_TOKEN``,
``*_API_KEY``, ...) and of the saved Hub login. The values are compared, never logged or written.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import constants, get_token

from trashnet_hf.core.errors import UserError

# A path starts a token: the start of the string, or after a space, bracket, quote, '=' or separator.
_TOKEN_START = r"(?<![^\s(\[{<'\"`=,;])"
# After a root: "/" and a name (a path inside it), or the end of the token (the folder itself).
_INSIDE = r"/(?=[^\s/'\"`)\]}>,;])"
_END = r"(?=/|$|[\s)\]}>'\"`,;:]|\.(?:\s|$))"
# An absolute path left in a string: /x, C:\x or \\server (~/x is allowed: HOME is written that way).
ABSOLUTE = re.compile(_TOKEN_START + r"(?:/[^\s/]|[A-Za-z]:[\\/]|\\\\[^\s\\])")
# Environment variables whose values are secrets: HF_TOKEN, WANDB_API_KEY, GITHUB_TOKEN, ...
SECRET_NAME = re.compile(r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE_KEY)$", re.I)
MIN_SECRET_CHARS = 8  # shorter values ("1", "true") would match ordinary text
# In a binary file a short root ("/tmp") can occur by chance; only needles this long are looked for there.
MIN_BINARY_NEEDLE = 8


class LeakError(UserError):
    """A file about to be published would hold a local path or a secret."""


@dataclass(frozen=True)
class Root:
    """A folder whose paths are rewritten: ``path`` as strings spell it, ``name`` for the folder itself,
    ``inside`` in place of ``path/`` before a path inside it ("" leaves it relative)."""

    path: str
    name: str
    inside: str = ""


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _spellings(value: str) -> set[str]:
    """A folder as written, with ~ expanded, and resolved (symlinks, relative to the working folder)."""
    expanded = Path(value).expanduser()
    spelled = {value.rstrip("/\\"), str(expanded)}
    with contextlib.suppress(OSError, RuntimeError):  # a symlink loop: the spellings above still count
        spelled.add(str(expanded.resolve()))
    return {s for s in spelled if s not in ("", ".", "..", "/", "\\")}


def _is_local_path(value: str) -> bool:
    """A config string that names a place on this machine: absolute, under ~, or an existing path."""
    if Path(value).is_absolute() or value.startswith("~"):
        return True
    return "\n" not in value and Path(value).exists()


def known_roots(config: Mapping[str, Any], folders: Iterable[str | Path] = ()) -> list[Root]:
    """The roots of a run: every local path in its ``config`` (data, extra data, output, cache, a local
    backbone, a checkpoint, and whatever folder flag comes next), ``folders``, the Hugging Face caches
    (a Hub dataset's files live there) and HOME; longest first, so the most specific root wins."""
    datasets_cache = os.environ.get("HF_DATASETS_CACHE") or str(Path(constants.HF_HOME) / "datasets")
    values = [
        *(v for v in _strings(config) if _is_local_path(v)),
        *map(str, folders),
        constants.HF_HUB_CACHE,
        datasets_cache,
        constants.HF_HOME,
    ]
    roots = {s: Root(s, Path(s).name or s) for v in values for s in _spellings(v)}
    roots |= {s: Root(s, "~", "~/") for s in _spellings(str(Path.home()))}
    return sorted(roots.values(), key=lambda r: (-len(r.path), r.path))


def secret_values() -> dict[str, str]:
    """The secrets that must not be published, by where they come from (never the value in a message)."""
    found = {
        f"${name}": value
        for name, value in os.environ.items()
        if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_CHARS
    }
    saved = get_token()  # HF_TOKEN or the file `hf auth login` saves; compared, never kept or shown
    if saved and len(saved) >= MIN_SECRET_CHARS and saved not in found.values():
        found["the saved Hugging Face login token"] = saved
    return found


def _key_path(path: str, key: object) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)


def _find(file: Path, needles: Mapping[bytes, str]) -> str | None:
    """What the first needle found in ``file`` stands for (read as bytes, memory-mapped), or None."""
    if file.stat().st_size == 0:
        return None
    with file.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        binary = data.find(b"\0", 0, 8192) != -1
        for needle, what in needles.items():
            if (not binary or len(needle) >= MIN_BINARY_NEEDLE) and data.find(needle) != -1:
                return what
    return None


class Redactor:
    """Rewrites the local paths in what is about to be published, then refuses whatever is left."""

    def __init__(self, roots: Iterable[Root], secrets: Mapping[str, str]) -> None:
        self.roots = {r.path: r for r in roots}
        self.secrets = dict(secrets)
        ordered = sorted(self.roots, key=len, reverse=True)  # the most specific root first
        self._absolute = [p for p in ordered if Path(p).is_absolute()]
        alternatives = "|".join(map(re.escape, ordered)) or r"(?!)"
        self._pattern = re.compile(f"{_TOKEN_START}(?P<root>{alternatives})(?:(?P<inside>{_INSIDE})|{_END})")

    @classmethod
    def for_run(cls, config: Mapping[str, Any], folders: Iterable[str | Path] = ()) -> Redactor:
        """The redactor of a run with this ``config`` (results.json's), published from ``folders``."""
        return cls(known_roots(config, folders), secret_values())

    def text(self, value: str) -> str:
        """``value`` with paths inside a root made relative and each root itself by its name."""

        def swap(match: re.Match[str]) -> str:
            root = self.roots[match["root"]]
            return root.inside if match["inside"] else root.name

        return self._pattern.sub(swap, value)

    def data(self, value: Any) -> Any:
        """A JSON structure with every string in it, keys included, rewritten by ``text``."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.data(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.data(v) for v in value]
        return value

    def leak(self, value: str) -> str | None:
        """What in ``value`` must not be published (a secret's source, a local path), or None."""
        for source, secret in self.secrets.items():
            if secret in value:
                return f"the value of {source}"
        for root in self._absolute:
            if root in value:
                return f"the local path {root}"
        if match := ABSOLUTE.search(value):
            return f"the absolute path {value[match.start() :].split()[0]}"
        return None

    @staticmethod
    def _refuse(where: str, leaked: str) -> LeakError:
        if leaked.startswith("the value of"):
            fix = "remove the secret from that file (it never belongs in a run's files), then run again"
        else:
            fix = (
                "it lies under no folder the run names, so it cannot be made relative: remove or shorten "
                "that entry in the run's files, then run again"
            )
        return LeakError(f"{where} would publish {leaked}; nothing was published: {fix}.")

    def check_data(self, value: Any, where: str, key: str = "") -> None:
        """LeakError naming the file and key path of the first string in ``value`` that ``leak`` finds."""
        if isinstance(value, str):
            if leaked := self.leak(value):
                raise self._refuse(f"{where}: {key or 'the whole file'}", leaked)
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and (leaked := self.leak(k)):
                    raise self._refuse(f"{where}: the key {_key_path(key, k)}", leaked)
                self.check_data(v, where, _key_path(key, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.check_data(v, where, _key_path(key, i))

    def check_text(self, text: str, where: str) -> None:
        """LeakError naming the file and line of the first line of ``text`` that ``leak`` finds."""
        for number, line in enumerate(text.splitlines(), 1):
            if leaked := self.leak(line):
                raise self._refuse(f"{where}: line {number}", leaked)

    def write_json(self, source: Path, dest: Path, where: str) -> None:
        """Publish the JSON file ``source`` as ``dest``: verbatim when it holds no local path, else
        rewritten; ``where`` names it in errors."""
        try:
            original = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(
                f"{source}: cannot read it as JSON ({err}); pass a folder written by train.py."
            ) from None
        redacted = self.data(original)
        self.check_data(redacted, where)
        if redacted == original:
            dest.write_bytes(source.read_bytes())
        else:
            dest.write_text(json.dumps(redacted, indent=2) + "\n", encoding="utf-8")

    def write_text(self, dest: Path, text: str, where: str) -> None:
        """Write ``text`` to ``dest`` rewritten by ``text`` and checked; ``where`` names it in errors."""
        redacted = self.text(text)
        self.check_text(redacted, where)
        with dest.open("w", encoding="utf-8", newline="") as f:  # newlines as given, as ModelCard.save
            f.write(redacted)

    def audit(self, folder: Path) -> None:
        """LeakError naming the first file under ``folder`` whose bytes hold a root or a secret (as text
        or JSON-escaped): the last look at everything a build wrote, weights, images and code included."""
        needles: dict[bytes, str] = {}
        for value, what in [
            *((root, f"the local path {root}") for root in self._absolute),
            *((secret, f"the value of {source}") for source, secret in self.secrets.items()),
        ]:
            for form in (value, json.dumps(value)[1:-1]):
                needles.setdefault(form.encode(), what)
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            if leaked := _find(file, needles):
                raise self._refuse(str(file.relative_to(folder)), leaked)
