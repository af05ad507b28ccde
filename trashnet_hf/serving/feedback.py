"""Corrections from the demo, kept as training data: ``<folder>/<label>/<uuid>.jpg`` plus one line per
image in ``<folder>/metadata.jsonl``, the layout ``datasets``' ImageFolder reads and
``train.py --extra-data-dir`` folds into the train split.

The store writes locally; pushing the folder to a Hub dataset is ``hub.client.feedback_scheduler``'s
job (a ``huggingface_hub.CommitScheduler``), whose lock the store takes around each write so that a commit
never uploads a half-written image or metadata line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from trashnet_hf.core.errors import UserError

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
# A correction is training data: re-encoded close to what the user sent (quality 95, no chroma
# subsampling), and re-encoding drops the upload's EXIF metadata (a phone photo's GPS position).
JPEG_QUALITY = 95
# Larger photos are scaled down to this longer side: training reads them at a few hundred pixels, and it
# bounds what one correction costs on disk (and in the Hub dataset) to a few hundred KB.
MAX_SIDE = 1024


class FeedbackError(UserError):
    """A correction that cannot be recorded (no image, a label the model does not know)."""


@dataclass
class FeedbackStore:
    """Records corrections under ``folder``; ``lock`` is shared with a Hub uploader when there is one."""

    folder: Path
    labels: Sequence[str]
    lock: Any = field(default_factory=threading.Lock)

    def record(
        self, image: Image.Image, label: str, predicted: str | None = None, score: float | None = None,
        model: str | None = None,
    ) -> Path:  # fmt: skip
        """Save ``image`` as ``<folder>/<label>/<uuid>.jpg`` and append its metadata line; return the path.

        ``label`` is the user's correction and must be one of the model's labels (a new class cannot be
        trained from a handful of corrections, and a typo would become a class)."""
        if label not in self.labels:
            raise FeedbackError(f"{label!r} is not one of the model's classes ({', '.join(self.labels)}).")
        name = f"{label}/{uuid.uuid4().hex}.jpg"
        line = {
            "file_name": name,
            "label": label,
            "predicted": predicted,
            "predicted_score": None if score is None else round(float(score), 4),
            "model": model,
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        path = self.folder / name
        image = image.convert("RGB")  # a copy: the caller's image is left as it was
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        with self.lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, "JPEG", quality=JPEG_QUALITY, subsampling=0)
            with (self.folder / METADATA_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        logger.info("Recorded a correction to %r (model said %r): %s", label, predicted, path)
        return path

    def count(self) -> int:
        """How many corrections the metadata file lists."""
        with contextlib.suppress(FileNotFoundError), (self.folder / METADATA_FILE).open() as f:
            return sum(1 for line in f if line.strip())
        return 0
