"""``trashnet-hf predict PATH... --model ID_OR_DIR|model.onnx``: batch inference to CSV or JSON.

PATHs are files, folders (searched recursively for image files) and globs. Images are decoded and
preprocessed (``Classifier.preprocess``, pipeline()'s transform) by a thread pool that keeps the next
batches ready while the model runs the current one: PIL's decoding and resizing and NumPy's array maths
release the GIL, so threads use the cores with none of worker processes' start-up and pickling cost. An
unreadable file gets a row with its reason, and the run goes on.
"""

from __future__ import annotations

import csv
import functools
import glob
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from trashnet_hf.core import cli, files
from trashnet_hf.core.errors import ConfigError, UserError
from trashnet_hf.serving.classifier import Classifier, ImageError, open_image

logger = logging.getLogger(__name__)

PROGRESS_LOG_SECONDS = 30.0  # off a terminal: at most one progress line this often (as training does)
PREFETCH_BATCHES = 2  # batches decoded ahead of the one the model runs


@dataclass
class PredictArgs:
    """Flags of ``trashnet-hf predict``."""

    paths: list[str] = field(
        metadata={
            "help": "Image files, folders (searched recursively for image files) and globs (quote them to "
            "let Python expand them, ** included). Each must match at least one file.",
            cli.POSITIONAL: True,
        }
    )
    model: str = cli.help_field(
        "A model folder written by training (OUTPUT_DIR/model), a Hub id (user/name) or an .onnx file "
        "written by `trashnet-hf export`."
    )
    batch_size: int = cli.help_field("Images per forward pass.", default=32)
    top_k: int | None = cli.help_field("Classes per image, best first; default: all of them.", default=None)
    format: Literal["csv", "json"] = cli.help_field(
        "csv: one row per image (path, error, label_1, score_1, ..., ood_score, not_waste); json: a list of "
        '{"path", "error", "predictions": [{"label", "score"}, ...], "ood_score", "not_waste"}. ood_score: '
        "how foreign the photo looks to the model (empty/null for a model without OOD data); not_waste: "
        "true when it is above the model's OOD threshold.",
        default="csv",
    )
    output: str | None = cli.help_field(
        "Write the predictions to this file; default: standard output.", default=None
    )
    overwrite: bool = cli.help_field(cli.OVERWRITE_HELP, default=False)
    device: str | None = cli.help_field(
        "Where the model runs: cuda, cuda:1, cpu...; default: the GPU if any.", default=None
    )
    num_threads: int | None = cli.help_field(
        "Threads decoding and preprocessing images; default: the CPU count, at most 8.", default=None
    )

    def __post_init__(self) -> None:
        """Raise ConfigError naming the flag for any value that cannot work, before any work starts."""
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1 (or left out for all classes), got {self.top_k}.")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"--num-threads must be at least 1, got {self.num_threads}.")
        cli.check_device("--device", self.device)
        if self.output is not None:
            cli.check_output("--output", self.output, self.overwrite)


@functools.cache
def _image_extensions() -> frozenset[str]:
    Image.init()  # registers every plugin, so EXTENSION lists all the formats this Pillow opens
    return frozenset(ext.lower() for ext, fmt in Image.EXTENSION.items() if fmt in Image.OPEN)


def is_image_name(name: str) -> bool:
    """Whether the file name has the extension of a format Pillow opens (``.jpg``, ``.png``, ...)."""
    return Path(name).suffix.lower() in _image_extensions()


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` at any depth (``files.walk``: symlinks followed without looping,
    hidden entries skipped, name order); a link that leads nowhere is listed, and its row says why."""
    return files.walk(folder, is_image_name)[0]


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """The files PATHs name, in order, each once: a file as it is (an unreadable one is reported later),
    a folder's image files (recursively), a glob's image files and folders. Raises UserError naming the
    first PATH that matches no file."""
    files: dict[Path, None] = {}  # an ordered set
    for pattern in patterns:
        path = Path(pattern)
        if path.is_file():
            matched = [path]
        elif path.is_dir():
            matched = image_files(path)
        elif glob.has_magic(pattern):
            matched = []
            # glob.glob, not Path.glob: a pattern may be absolute, and Path.glob takes relative ones only.
            for hit in map(Path, sorted(glob.glob(pattern, recursive=True))):  # noqa: PTH207
                matched += image_files(hit) if hit.is_dir() else [hit] if is_image_name(hit.name) else []
        else:
            raise UserError(f"{pattern!r}: no such file or folder.")
        if not matched:
            what = "folder" if path.is_dir() else "glob"
            raise UserError(
                f"{pattern!r}: this {what} matches no image file (by extension, e.g. .jpg, .png)."
            )
        files.update(dict.fromkeys(matched))
    return list(files)


@dataclass
class Row:
    """One image's outcome: its predictions, best first, or why it could not be read."""

    path: str
    predictions: list[dict[str, Any]]
    error: str | None = None
    ood_score: float | None = None  # None: unreadable, or a model without OOD data
    not_waste: bool | None = None  # None: unreadable


def _load(classifier: Classifier, path: Path) -> np.ndarray | str:
    try:
        return classifier.preprocess(open_image(path))
    except ImageError as err:
        return str(err).removeprefix(f"{path}: ")  # the row names the file already


def predict_files(
    classifier: Classifier, files: Sequence[Path], batch_size: int, top_k: int | None, threads: int
) -> Iterator[Row]:
    """Rows for ``files`` in order; decoding runs ``PREFETCH_BATCHES`` batches ahead of the model."""
    queue: deque[tuple[Path, Future[np.ndarray | str]]] = deque()
    todo = iter(files)
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:

        def fill() -> None:
            while len(queue) < batch_size * (PREFETCH_BATCHES + 1):
                path = next(todo, None)
                if path is None:
                    return
                queue.append((path, pool.submit(_load, classifier, path)))

        fill()
        while queue:
            batch = [queue.popleft() for _ in range(min(batch_size, len(queue)))]
            fill()  # the next batches decode while this one runs
            loaded = [(path, future.result()) for path, future in batch]
            arrays = [x for _, x in loaded if isinstance(x, np.ndarray)]
            answers = iter(classifier.assess_batch(np.stack(arrays), top_k) if arrays else [])
            for path, x in loaded:
                if isinstance(x, np.ndarray):
                    a = next(answers)
                    yield Row(str(path), a.ranked, None, a.ood_score, a.foreign)
                else:
                    yield Row(str(path), [], x)


def write_rows(rows: Iterable[Row], fmt: str, k: int, stream: IO[str]) -> None:
    """Stream ``rows`` as CSV (``k`` label/score column pairs) or as one JSON list."""
    if fmt == "csv":
        writer = csv.writer(stream)
        pairs = (f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "score"))
        writer.writerow(["path", "error", *pairs, "ood_score", "not_waste"])
        for row in rows:
            cells = [cell for p in row.predictions for cell in (p["label"], f"{p['score']:.6f}")]
            cells += [""] * (2 * k - len(cells))  # an unreadable file: the OOD columns stay in place
            ood = "" if row.ood_score is None else f"{row.ood_score:.6f}"
            flag = "" if row.not_waste is None else str(row.not_waste).lower()
            writer.writerow([row.path, row.error or "", *cells, ood, flag])
        return
    stream.write("[")
    for i, row in enumerate(rows):
        item = {
            "path": row.path, "error": row.error, "predictions": row.predictions,
            "ood_score": row.ood_score, "not_waste": row.not_waste,
        }  # fmt: skip
        stream.write(("," if i else "") + "\n  " + json.dumps(item))
    stream.write("\n]\n")


class Progress:
    """A bar on a terminal; a log line at most every PROGRESS_LOG_SECONDS otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.start = self.last_line = time.perf_counter()
        self.bar = tqdm(total=total, unit="img", disable=not sys.stderr.isatty())

    def __call__(self, rows: Iterable[Row]) -> Iterator[Row]:
        for row in rows:
            self.done += 1
            self.failed += row.error is not None
            self.bar.update()
            now = time.perf_counter()
            if self.bar.disable and now - self.last_line >= PROGRESS_LOG_SECONDS:
                self.last_line = now
                logger.info("%d/%d images (%.0f%%), %.1f img/s", self.done, self.total,
                            100 * self.done / self.total, self.done / (now - self.start))  # fmt: skip
            yield row
        self.bar.close()


def run(args: PredictArgs) -> int:
    files = expand_paths(args.paths)  # every PATH checked before the model loads
    classifier = Classifier.load(args.model, args.device)
    threads = args.num_threads or min(8, os.cpu_count() or 1)
    logger.info("Predicting %d images, batch %d, %d decoding threads", len(files), args.batch_size, threads)
    k = len(classifier.labels) if args.top_k is None else min(args.top_k, len(classifier.labels))
    progress = Progress(len(files))
    rows = progress(predict_files(classifier, files, args.batch_size, args.top_k, threads))
    if args.output is None:
        write_rows(rows, args.format, k, sys.stdout)
    else:
        with Path(args.output).open("w", newline="" if args.format == "csv" else None) as stream:
            write_rows(rows, args.format, k, stream)
    elapsed = time.perf_counter() - progress.start
    failed = f"; {progress.failed} unreadable, reported in the output" if progress.failed else ""
    logger.info("%d images in %.1f s (%.1f img/s)%s", progress.done, elapsed, progress.done / elapsed, failed)
    return 0


def main(argv: list[str] | None = None, prog: str = "trashnet-hf predict") -> int:
    """Classify image files, folders and globs with a trained model (a folder, a Hub id or an .onnx
    file), in batches, with pipeline()'s preprocessing. Unreadable files are reported in the output with
    their reason; the rest are predicted."""
    return cli.run(PredictArgs, run, argv, description=main.__doc__, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
