"""The Gradio demo: a photo (or many) in, calibrated scores and a bin hint out, corrections kept as data.

``app.py`` at the top of the repository (and of the Space folder) is a thin entry point to ``main``. The
model loads once, at start-up (``resolve_model``: ``--model``, ``MODEL_ID``, ``model_id.txt``, the newest
local training output); every request then runs ``serving.classifier.Classifier`` on the CPU (or the
GPU when there is one). The REST endpoints are Gradio's own API, under stable names: ``/classify`` (one
image) and ``/classify_batch`` (several); the README shows the ``gradio_client`` and ``curl`` calls.
"""

from __future__ import annotations

import base64
import binascii
import csv
import functools
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder, is_allowed_file
from PIL import Image

from trashnet_hf import example_photo
from trashnet_hf.core import cli
from trashnet_hf.core.errors import ConfigError, UserError
from trashnet_hf.serving.classifier import Assessment, Classifier, ImageError, open_image
from trashnet_hf.serving.feedback import FeedbackStore
from trashnet_hf.serving.hints import (  # as the static page
    BIN_HINTS,
    FOREIGN_ADVICE,
    FOREIGN_MESSAGE,
    MAX_FILE_BYTES,
    MIN_SIDE,
)

logger = logging.getLogger(__name__)

TOP_K = 3
# Below the model's own threshold on the calibrated top score the page says "not sure": set at calibration
# on its validation split (training.calibration's rule, stored in config.json), read by the Classifier,
# which falls back to 0.6 (core.model.DEFAULT_LOW_CONFIDENCE) for a model that stores none.
# The upload limits (MIN_SIDE, MAX_FILE_BYTES) and BIN_HINTS live in serving.hints, shared with the page.
# The one answer to a path that is not an upload, whether or not it exists: nothing about the server leaks.
NOT_UPLOADED = "Refused. The app reads only images uploaded to it; send the image itself."
MAX_BATCH_FILES = 50
# ood_score and not_waste as the batch CLI (serving.predict) names and writes them: the score ("" for a
# model without OOD data) and "true"/"false" ("" for an unreadable file).
CSV_COLUMNS = ["file", "label", "score", "note", "ood_score", "not_waste"]
NOT_WASTE_NOTE = "not waste"  # the batch note of a foreign photo (over "not sure")
# Markdown and HTML punctuation, backslash-escaped in text read from a model's files (ood_note).
MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$&:])")

TITLE = "Which bin? Sorting trash photos with a fine-tuned CNN"
INTRO = (
    "Drop in a photo of a single piece of rubbish, or click one of the example photos, and the model "
    "names its material (cardboard, glass, metal, paper, plastic or other trash) with calibrated "
    "probabilities, so 80% means right about 8 times in 10, and suggests a bin (rules vary by town: "
    "check yours). It was fine-tuned on TrashNet (2,527 photos of single objects on a white background), so "
    "it is most reliable on photos like the examples. If it gets one wrong, tell it below: corrections are "
    "saved as new training data."
)
CREDITS = (
    "Example photos: [TrashNet](https://github.com/garythung/trashnet) by Gary Thung and Mindy Yang "
    "(MIT licence). REST API: see *Use via API* at the bottom of the page."
)
EMPTY_VERDICT = "*Add a photo, or click an example, to see which bin it goes in.*"
CSS = """
.verdict p { font-size: 1.05rem; margin: 0.2rem 0; }
.notice p { color: #b45309; font-weight: 600; }
footer { margin-top: 0 !important; }
"""


@dataclass
class AppArgs:
    """``python app.py``: serve the demo."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "Model to serve: a local model folder (OUTPUT_DIR/model), a Hub id (user/name), an .onnx "
            "file, or one on the Hub (user/name/model.onnx: served without PyTorch). Default: the MODEL_ID "
            "environment variable, then model_id.txt next to app.py, then the newest local training output "
            "(outputs/model or outputs/*/model)."
        },
    )
    host: str | None = field(
        default=None,
        metadata={"help": "Address to listen on; default: $GRADIO_SERVER_NAME, else 127.0.0.1 (local only)."},
    )
    port: int | None = field(
        default=None, metadata={"help": "Port; default: $GRADIO_SERVER_PORT, else 7860 (or the next free)."}
    )
    feedback_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder for corrections (<dir>/<label>/<id>.jpg); default: $FEEDBACK_DIR, else "
            "./feedback."
        },
    )
    feedback_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset (user/name) the corrections are pushed to every few minutes; needs a write "
            "token in $HF_TOKEN. Default: $FEEDBACK_DATASET; unset: corrections stay local."
        },
    )
    threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads per forward pass (onnxruntime's intra-op threads for an .onnx model, "
            "torch's otherwise); default: the CPU count, at most 2."
        },
    )
    concurrency: int = field(
        default=2,
        metadata={
            "help": "Requests the model serves at once (Gradio's default_concurrency_limit); more wait in "
            "the queue. 2 keeps both cores of a CPU Space busy without oversubscribing them."
        },
    )

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}.")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {self.concurrency}.")
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigError(f"--port must be between 1 and 65535, got {self.port}.")


# --- Finding the model ---------------------------------------------------------------------------------


def newest_local_model(root: Path) -> Path | None:
    """The most recently written ``outputs/model`` or ``outputs/*/model`` under ``root`` (by config.json's
    time)."""
    candidates = [root / "outputs" / "model", *root.glob("outputs/*/model")]
    found = [c for c in candidates if (c / "config.json").is_file()]
    return max(found, key=lambda c: (c / "config.json").stat().st_mtime) if found else None


def resolve_model(flag: str | None, app_dir: Path) -> tuple[str, str]:
    """The model to serve and where that choice came from: ``--model``, ``$MODEL_ID``, ``model_id.txt``
    next to app.py, the newest local training output; a UserError saying how to give one otherwise."""
    if flag:
        return flag, "--model"
    if os.environ.get("MODEL_ID", "").strip():
        return os.environ["MODEL_ID"].strip(), "MODEL_ID"
    id_file = app_dir / "model_id.txt"
    if id_file.is_file() and id_file.read_text().strip():
        return id_file.read_text().strip(), str(id_file)
    local = newest_local_model(app_dir)
    if local is not None:
        return str(local), "newest local training output"
    raise UserError(
        f"no model to serve: pass --model (a model folder, a Hub id or a .onnx file), set MODEL_ID, write a "
        f"Hub id into {id_file}, or train one first (python train.py writes outputs/model)."
    )


def public_model_name(model: str) -> str:
    """How the model is named to the public (feedback metadata, the footer): a Hub id as it is; a local
    folder or .onnx file by its name only (``OUT/model`` by its run folder ``OUT``), never by where it lies
    on this machine."""
    path = Path(model)
    if path.exists():
        return path.parent.name if path.name == "model" else path.name
    return model


def model_link(model: str) -> str:
    """The footer's name for the model: a link for a Hub id (for ``USER/NAME/FILE``, to that file of the
    repo); a local folder by its run folder's name (its full path means nothing to a visitor)."""
    if Path(model).exists():
        return f"a local training run (`{public_model_name(model)}`)"
    repo_id, _, filename = model.rpartition("/") if model.count("/") == 2 else (model, "", "")
    if filename:
        return f"[{model}](https://huggingface.co/{repo_id}/blob/main/{filename})"
    return f"[{model}](https://huggingface.co/{model})"


def example_files(app_dir: Path, labels: list[str]) -> list[Path]:
    """One example photo per class: ``examples/<class>.jpg`` next to app.py (the Space folder), else the
    package's bundled TrashNet sample (``sample/<class>/<class>1.jpg``)."""
    out = []
    for label in labels:
        for path in (app_dir / "examples" / f"{label}.jpg", example_photo(label)):
            if path.is_file():
                out.append(path)
                break
    return out


# --- Requests ------------------------------------------------------------------------------------------


def uploaded_file(path: Any, blocked: Sequence[str | Path] = ()) -> Path:
    """The real path (symlinks followed) of a file Gradio received as an upload; ImageError(NOT_UPLOADED)
    for anything else, existing or not.

    Gradio's own rule, with Gradio's own helpers: the file must lie in its upload cache (``GRADIO_TEMP_DIR``,
    ``get_upload_folder``) and in none of ``blocked``, as ``processing_utils._check_allowed`` demands when it
    preprocesses an event. Gradio applies that check only to payloads tagged ``"meta": {"_type":
    "gradio.FileData"}``; gr.Image's ImageData does not require the tag, so an untagged ``{"path": ...}``
    reaches the function unchecked, and this check runs on every path."""
    try:
        real = Path(os.path.realpath(path)) if isinstance(path, str) and path else None
    except ValueError:  # an embedded NUL byte
        real = None
    if real is None:
        raise ImageError(NOT_UPLOADED)
    allowed, _ = is_allowed_file(
        real, blocked_paths=list(blocked), allowed_paths=[], created_paths=[get_upload_folder()]
    )
    if not allowed:
        raise ImageError(NOT_UPLOADED)
    return real


def image_from_data_url(url: str, name: str) -> Image.Image:
    """A ``data:`` URL's image, under an upload's limits: at most MAX_FILE_BYTES, checked before the
    base64 is decoded, and the image bounds (MIN_SIDE, aspect, pixels) before the pixels are."""
    encoded = url.rsplit(",", 1)[-1]
    if len(encoded) > 4 * (MAX_FILE_BYTES // 3 + 1):
        raise ImageError(f"{name}: over the upload limit of {MAX_FILE_BYTES:,} bytes; send a smaller image")
    try:
        data = base64.b64decode(encoded, validate=True)
    except binascii.Error as err:
        raise ImageError(f"{name}: the image arrived as a data: URL that is not valid base64") from err
    try:
        return open_image(data, require_side=MIN_SIDE)
    except ImageError as err:
        raise ImageError(str(err).replace("<bytes>", name, 1)) from err


def load_upload(payload: Any, blocked: Sequence[str | Path] = ()) -> tuple[Image.Image, str]:
    """The RGB image and display name of one upload: Gradio's file payload (the events skip Gradio's own
    decoding, so that every bad file gets this module's plain message) or a data: URL. A path must be an
    upload (``uploaded_file``); the image must pass ``decoding.check_bounds`` with MIN_SIDE, from its
    header. Raises ImageError with a one-line reason that names the file as the user called it."""
    if isinstance(payload, dict):
        path, name, url = payload.get("path"), payload.get("orig_name"), payload.get("url")
    else:
        path, name, url = payload, None, None
    name = name if isinstance(name, str) and name else None
    if not path and isinstance(url, str) and url.startswith("data:"):
        name = name or "pasted image"
        return image_from_data_url(url, name), name
    if not path:
        raise ImageError("no image arrived; upload it again")
    real = uploaded_file(path, blocked)
    name = name or real.name
    try:
        image = open_image(real, require_side=MIN_SIDE)
    except ImageError as err:
        raise ImageError(str(err).replace(str(real), name)) from err  # the user never saw the cache path
    return image, name


def verdict(
    ranked: list[dict[str, Any]], labels: list[str], seconds: float, device: str, threshold: float
) -> str:
    """The Markdown under the scores: the bin hint, the low-confidence notice (top score under
    ``threshold``, the model's own), the model's time."""
    top = ranked[0]
    hint = BIN_HINTS.get(top["label"], "")
    lines = [f"**{top['label'].capitalize()}**{f': {hint}' if hint else ''}"]
    if top["score"] < threshold:
        lines.append(
            f"⚠️ **Not sure** (top score {top['score']:.1%}, under {threshold:.1%}): is this one of the "
            f"{len(labels)} kinds ({', '.join(labels)})? A closer photo of one object on a plain background "
            "helps."
        )
    lines.append(model_time(seconds, device))
    return "\n\n".join(lines)


def foreign_verdict(assessment: Assessment, threshold: float, seconds: float, device: str) -> str:
    """The Markdown for a photo whose OOD score is over the model's ``threshold``: FOREIGN_MESSAGE and
    FOREIGN_ADVICE instead of a label and a bin, then, small, the score and the closest kinds (what the
    model would say were it waste), then the model's time."""
    closest = ", ".join(f"{r['label']} {r['score']:.1%}" for r in assessment.ranked[:TOP_K])
    return "\n\n".join(
        [
            f"🚫 **{FOREIGN_MESSAGE}** {FOREIGN_ADVICE}",
            f"<small>Not-waste score {assessment.ood_score:.4g}, over this model's threshold "
            f"{threshold:.4g}. Were it waste, the closest kinds would be: {closest}.</small>",
            model_time(seconds, device),
        ]
    )


def model_time(seconds: float, device: str) -> str:
    return f"<small>Model time: {seconds * 1000:.0f} ms on {device.upper()}</small>"


def batch_cells(assessment: Assessment, low_confidence: float) -> list[Any]:
    """A readable file's batch cells after its name: label, score, note, ood_score, not_waste (as the
    batch CLI writes the last two). The note says "not waste" for a foreign photo, else "not sure" under
    ``low_confidence``."""
    top = assessment.ranked[0]
    note = "not sure" if top["score"] < low_confidence else ""
    ood = None if assessment.ood_score is None else round(assessment.ood_score, 6)
    return [
        top["label"],
        round(top["score"], 4),
        NOT_WASTE_NOTE if assessment.foreign else note,
        ood,
        str(assessment.foreign).lower(),
    ]


@dataclass
class Demo:
    """The loaded model and the feedback store, with the functions the page and the API call."""

    classifier: Classifier
    model_name: str  # as given: a Hub id, a local folder or a .onnx file (public_model_name for the public)
    store: FeedbackStore
    csv_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="trashnet-app-")))

    def _load(self, payload: Any) -> tuple[Image.Image, str]:
        # Never from the feedback folder, even were it inside Gradio's upload cache.
        return load_upload(payload, blocked=[self.store.folder])

    def _assess(self, images: list[Image.Image]) -> tuple[list[Assessment], float]:
        start = time.perf_counter()
        assessed = self.classifier.assess(images)
        return assessed, time.perf_counter() - start

    def classify(self, image: Any) -> tuple[dict[str, float] | None, str]:
        """One image -> (top-3 scores for gr.Label, the verdict Markdown). A photo the model's OOD score
        marks as foreign gets no label (None: the Label is empty) and the "not waste" verdict."""
        if image is None:  # the image was cleared
            return None, EMPTY_VERDICT
        try:
            pil, _ = self._load(image)
        except ImageError as err:
            raise gr.Error(str(err), title="Cannot read this image", print_exception=False) from err
        (assessment,), seconds = self._assess([pil])
        device = self.classifier.device
        if assessment.foreign:
            logger.info(
                "Not waste: OOD score %.4g over %.4g", assessment.ood_score, self.classifier.ood_threshold
            )
            return None, foreign_verdict(assessment, self.classifier.ood_threshold, seconds, device)
        ranked = assessment.ranked
        scores = {r["label"]: round(r["score"], 4) for r in ranked[:TOP_K]}
        threshold = self.classifier.low_confidence
        return scores, verdict(ranked, self.classifier.labels, seconds, device, threshold)

    def classify_batch(self, files: list[Any] | None) -> tuple[list[list[Any]], str]:
        """Several images -> (rows of CSV_COLUMNS: file, label, score, note, ood_score, not_waste; the same
        rows as a CSV file). An unreadable file gets a row saying why instead of failing the batch."""
        if not files:
            raise gr.Error("Add one or more images first.", print_exception=False)
        if len(files) > MAX_BATCH_FILES:
            raise gr.Error(
                f"{len(files)} files: send at most {MAX_BATCH_FILES} at a time.", print_exception=False
            )
        rows: list[list[Any]] = []
        good: list[tuple[int, Image.Image]] = []
        for payload in files:
            try:
                image, name = self._load(payload)
            except ImageError as err:
                rows.append([_display_name(payload), "", None, str(err).split(": ", 1)[-1], None, ""])
                continue
            good.append((len(rows), image))
            rows.append([name])
        assessed, _ = self._assess([image for _, image in good]) if good else ([], 0.0)
        for (k, _), assessment in zip(good, assessed, strict=True):
            rows[k][1:] = batch_cells(assessment, self.classifier.low_confidence)
        return rows, str(self._write_csv(rows))

    def _write_csv(self, rows: list[list[Any]]) -> Path:
        path = self.csv_dir / uuid.uuid4().hex / "predictions.csv"
        path.parent.mkdir(parents=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)
        return path

    def record_feedback(self, image: Any, correction: str | None) -> str:
        """Save the image under the user's correction, with the model's prediction for that very image
        (computed again here: the page's last answer may belong to another image, and an API client sends
        the image alone); the Markdown saying what was recorded."""
        if image is None:
            raise gr.Error("Upload or pick a photo first, then say what it really is.", print_exception=False)
        if not correction:
            raise gr.Error("Pick the right kind from the list first.", print_exception=False)
        try:
            pil, _ = self._load(image)
            (ranked,) = self.classifier.predict([pil])  # the label alone: no OOD score wanted here
            model = public_model_name(self.model_name)
            self.store.record(pil, correction, ranked[0]["label"], ranked[0]["score"], model=model)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from err
        return f"Thanks: saved as **{correction}** ({self.store.count()} correction(s) collected so far)."


def threshold_note(classifier: Classifier) -> str:
    """The page's line on when it says "not sure": the number, and whether the model set it. (The rule's
    own text stays in the logs and the model card; only ``ood_note`` shows a model's text, escaped.)"""
    source = (
        "the default: this model stores no threshold"
        if classifier.low_confidence_rule is None
        else "the threshold this model stores, set at calibration on its validation photos"
    )
    under = f"{classifier.low_confidence:.1%}"
    return f'<small>"Not sure" when the top score is under {under} ({source}).</small>'


def ood_note(classifier: Classifier) -> str:
    """The page's line on when it says "not waste": the model's OOD threshold and the rule that set it;
    "" for a model without OOD data. The rule is text from the model's files, so it is shown inert
    (``plain_text``: one line, at most 300 characters, every Markdown and HTML sign escaped)."""
    if classifier.ood_threshold is None:
        return ""
    rule = plain_text(classifier.ood_rule or "rule not recorded")
    return (
        f'<small>"Not waste" (no label, no bin) when the photo\'s out-of-distribution score, how unlike the '
        f"training photos it looks to the model, is over {classifier.ood_threshold:.4g} (this model's "
        f"threshold: {rule}).</small>"
    )


def plain_text(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut at ``limit`` characters, with MARKDOWN_SPECIAL backslash-escaped: Markdown
    shows it as written and makes no link, image, HTML or formula of it."""
    line = " ".join(text.split())
    line = line if len(line) <= limit else line[: limit - 1] + "…"
    return MARKDOWN_SPECIAL.sub(r"\\\1", line)


def _display_name(payload: Any) -> str:
    """The batch row's name for a file that could not be read: what the client called it (never looked up)."""
    name, path = (
        (payload.get("orig_name"), payload.get("path")) if isinstance(payload, dict) else (None, payload)
    )
    if isinstance(name, str) and name:
        return name
    return Path(path).name if isinstance(path, str) and path else "upload"


# --- The page ------------------------------------------------------------------------------------------


def build(demo: Demo, examples: list[Path]) -> gr.Blocks:
    """The page: one photo (with examples and the feedback control) and a batch tab."""
    labels = demo.classifier.labels
    # analytics_enabled=False: the demo phones nowhere (and an offline machine waits on no timeout).
    with gr.Blocks(title="Which bin? TrashNet classifier", analytics_enabled=False) as blocks:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(INTRO)
        with gr.Tab("One photo"), gr.Row(equal_height=False):
            with gr.Column(scale=1):
                image = gr.Image(
                    sources=["upload", "webcam", "clipboard"], type="filepath", image_mode=None,
                    label="Photo", height=300, elem_id="photo",
                )  # fmt: skip
                gr.Examples(
                    examples=[[str(p)] for p in examples], inputs=image, examples_per_page=len(labels),
                    label="Examples (real TrashNet photos)",
                )  # fmt: skip
            with gr.Column(scale=1):
                scores = gr.Label(num_top_classes=TOP_K, label="Top 3, calibrated", elem_id="scores")
                advice = gr.Markdown(EMPTY_VERDICT, elem_classes="verdict", elem_id="verdict")
                gr.Markdown(threshold_note(demo.classifier), elem_id="threshold-note")
                if note := ood_note(demo.classifier):
                    gr.Markdown(note, elem_id="ood-note")
                with gr.Accordion("Wrong? Tell the model", open=True, elem_id="feedback"):
                    correction = gr.Dropdown(choices=labels, value=None, label="It is really")
                    send = gr.Button("Save correction", size="md", elem_id="send-feedback")
                    thanks = gr.Markdown(elem_id="feedback-status")
        with gr.Tab("Many photos"):
            files = gr.File(
                file_count="multiple", file_types=["image"], label=f"Photos (up to {MAX_BATCH_FILES})",
                elem_id="batch-files",
            )  # fmt: skip
            run_batch = gr.Button("Classify all", variant="primary")
            table = gr.Dataframe(
                headers=CSV_COLUMNS, label="Results", interactive=False, elem_id="batch-table"
            )
            csv_out = gr.File(label="Results as CSV")
        gr.Markdown(f"<small>Model: {model_link(demo.model_name)}. {CREDITS}</small>")

        # preprocess=False: the functions decode the upload themselves (load_upload: uploads only, size
        # bounds from the header), so a non-image or a bomb gets a plain message rather than Gradio's generic
        # processing error. All three run the model: one concurrency group, --concurrency at once in all.
        image.change(
            demo.classify, image, [scores, advice], api_name="classify", preprocess=False,
            trigger_mode="always_last", concurrency_id="model",
        )  # fmt: skip
        run_batch.click(
            demo.classify_batch, files, [table, csv_out], api_name="classify_batch", preprocess=False,
            concurrency_id="model",
        )  # fmt: skip
        send.click(
            demo.record_feedback, [image, correction], thanks, api_name="feedback", preprocess=False,
            concurrency_id="model",
        )  # fmt: skip
    return blocks


def launch(blocks: gr.Blocks, args: AppArgs, examples: list[Path], **kwargs: Any) -> tuple[Any, str, Any]:
    """Queue and start the server (Gradio's launch; ``kwargs`` e.g. prevent_thread_lock=True)."""
    blocks.queue(default_concurrency_limit=args.concurrency)
    return blocks.launch(
        server_name=args.host, server_port=args.port, max_file_size=MAX_FILE_BYTES,
        allowed_paths=sorted({str(p.parent) for p in examples}), theme=gr.themes.Soft(primary_hue="emerald"),
        blocked_paths=[str(feedback_folder(args))],  # never served, whatever folder it lies in
        css=CSS, footer_links=["api", "gradio"], **kwargs,
    )  # fmt: skip


def create(args: AppArgs, app_dir: Path) -> tuple[gr.Blocks, list[Path]]:
    """Load the model once and build the page (no server yet)."""
    threads = args.threads or min(2, os.cpu_count() or 1)  # a CPU Space has 2 vCPUs; more only contend
    model, origin = resolve_model(args.model, app_dir)
    logger.info("Serving with trashnet_hf from %s", Path(__file__).parent)
    logger.info("Loading model %s (from %s), %d CPU thread(s)", model, origin, threads)
    classifier = Classifier.load(model, threads=threads)  # an ONNX session takes its threads here
    if classifier.backend == "torch":  # only a PyTorch model imports torch; an ONNX Space has none
        import torch

        torch.set_num_threads(threads)
    classifier.predict([Image.new("RGB", (64, 64))])  # warm-up: the first visitor should not pay for it
    store = _feedback_store(args, classifier.labels)
    examples = example_files(app_dir, classifier.labels)
    return build(Demo(classifier, model, store), examples), examples


def feedback_folder(args: AppArgs) -> Path:
    """Where corrections are kept: --feedback-dir, $FEEDBACK_DIR, else ./feedback."""
    return Path(args.feedback_dir or os.environ.get("FEEDBACK_DIR") or "feedback").absolute()


def _feedback_store(args: AppArgs, labels: list[str]) -> FeedbackStore:
    """The local store; pushed to a Hub dataset only when one and a token are configured."""
    folder = feedback_folder(args)
    dataset = args.feedback_dataset or os.environ.get("FEEDBACK_DATASET")
    token = os.environ.get("HF_TOKEN")
    if not (dataset and token):
        logger.info("Corrections are saved in %s (set FEEDBACK_DATASET and HF_TOKEN to push them)", folder)
        return FeedbackStore(folder, labels)
    from trashnet_hf.hub import client as hub  # only a configured push needs the Hub

    folder.mkdir(parents=True, exist_ok=True)
    try:
        scheduler = hub.feedback_scheduler(folder, dataset, token)
    except UserError as err:
        logger.warning("Corrections stay local in %s: %s", folder, err)
        return FeedbackStore(folder, labels)
    logger.info("Corrections are saved in %s and pushed to dataset %s every few minutes", folder, dataset)
    return FeedbackStore(folder, labels, lock=scheduler.lock)


def serve(args: AppArgs, app_dir: Path) -> int:
    blocks, examples = create(args, app_dir)
    launch(blocks, args, examples)
    return 0


def main(argv: list[str] | None = None, app_dir: Path | None = None, prog: str = "app.py") -> int:
    """``python app.py``: parse the flags, load the model, serve until interrupted."""
    body = functools.partial(serve, app_dir=app_dir or Path.cwd())
    return cli.run(AppArgs, body, argv, description=__doc__, prog=prog)
