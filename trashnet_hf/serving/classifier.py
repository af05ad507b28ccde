"""Serving a trained model: one ``Classifier`` over a model folder, a Hub id or an exported ``.onnx`` file.

Scores equal ``pipeline("image-classification")``'s: the input goes through the same eval transform as
``TimmWrapperImageProcessor``'s (timm's ``create_transform`` from the model's own ``pretrained_cfg``),
computed bit for bit in NumPy and PIL by ``Preprocessing.to_array``, and the scores are the softmax of the
logits, sorted like the pipeline sorts them. The batch CLI (``trashnet_hf.serving.predict``), the app and
the benchmarks all go through this class. ``assess`` gives the same ranked labels with the model's OOD
("not waste") score from the same forward pass (``trashnet_hf.core.ood``; an ONNX file's ``ood_score``
output) and whether it is above the model's ``ood_threshold``.

An ONNX model needs onnxruntime, NumPy and PIL only: torch (and transformers, timm) load only for a
PyTorch model, so the Space that serves ``USER/NAME/model.onnx`` installs none of them.

On a GPU the model runs in channels_last with bf16 autocast (scores then differ from the float32
pipeline's by ~1e-3, never enough to matter for a 6-class argmax); on a CPU it runs in float32, exactly as
the pipeline does. Each batch costs one host transfer, never one per image.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from trashnet_hf.core.decoding import DECODE_ERRORS, ImageBoundsError, load_rgb
from trashnet_hf.core.errors import UserError
from trashnet_hf.core.model_meta import (
    DEFAULT_LOW_CONFIDENCE,
    OOD_RULE_KEY,
    OOD_THRESHOLD_KEY,
    THRESHOLD_KEY,
    THRESHOLD_RULE_KEY,
    ModelLoadError,
)
from trashnet_hf.core.preprocessing import Preprocessing
from trashnet_hf.hub import client as hub

if TYPE_CHECKING:  # a PyTorch model only: serving an ONNX file imports no torch
    import torch

logger = logging.getLogger(__name__)

# Keys of an exported .onnx file's metadata_props (written by trashnet_hf.serving.onnx): with them the
# file alone is a classifier, no config.json needed.
ONNX_LABELS_KEY = "trashnet_hf.labels"  # JSON list, in output order
ONNX_CFG_KEY = "trashnet_hf.pretrained_cfg"  # JSON object: the timm data config of the model
ONNX_THRESHOLD_KEY = f"trashnet_hf.{THRESHOLD_KEY}"  # JSON number, when the model has one
ONNX_RULE_KEY = f"trashnet_hf.{THRESHOLD_RULE_KEY}"  # its rule, one line
ONNX_OOD_THRESHOLD_KEY = f"trashnet_hf.{OOD_THRESHOLD_KEY}"  # JSON number, when the model has OOD data
ONNX_OOD_RULE_KEY = f"trashnet_hf.{OOD_RULE_KEY}"  # how it was set, one line
ONNX_INPUT = "pixel_values"
ONNX_OUTPUT = "logits"
ONNX_OOD_OUTPUT = "ood_score"  # (batch,), a second output when the model has OOD data

# What a backend computes for a float32 batch: softmax scores (N, C) and OOD scores (N,) or None.
Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


class ImageError(UserError):
    """A file or bytes that are not a usable image; the message is one line naming it and why."""


def open_image(source: str | os.PathLike | bytes, require_side: int = 1) -> Image.Image:
    """An image as RGB, EXIF-transposed, decoded as training decodes it (``load_rgb``); raises
    ImageError with a one-line reason (missing, 0 bytes, not an image, too many pixels, a side under
    ``require_side`` pixels, too thin, truncated...). The size limits are checked from the header, before
    anything is decoded or resized."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes):
        if not source:
            raise ImageError("<bytes>: 0 bytes, not an image")
    else:
        path = Path(source)
        if path.is_dir():
            raise ImageError(f"{name}: a folder, not an image file")
        try:
            size = path.stat().st_size
        except OSError as err:
            raise ImageError(f"{name}: cannot read it ({err.strerror})") from err
        if size == 0:
            raise ImageError(f"{name}: 0 bytes (an empty file), not an image")
    try:
        return load_rgb(source if isinstance(source, bytes) else str(source), require_side=require_side)
    except ImageBoundsError as err:
        raise ImageError(f"{name}: {err}") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{name}: too many pixels to decode safely ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{name}: not an image format Pillow can read") from err
    except DECODE_ERRORS as err:
        reason = " ".join(str(err).split()) or "no details"
        raise ImageError(f"{name}: cannot decode it ({type(err).__name__}: {reason})") from err


def low_confidence_of(value: Any, rule: Any, name: str) -> tuple[float, str | None]:
    """The "not sure" threshold a model stores (config.json, or an .onnx file's metadata, named ``name``)
    and the rule that set it; (DEFAULT_LOW_CONFIDENCE, None), logged, for a model that stores none
    (trained before thresholds were stored, with --calibrate false, or elsewhere). ModelLoadError for a
    value that is not a score in (0, 1)."""
    if value is None:
        logger.info(
            "%s stores no low-confidence threshold (%s): 'not sure' under the default %s",
            name, THRESHOLD_KEY, DEFAULT_LOW_CONFIDENCE,
        )  # fmt: skip
        return DEFAULT_LOW_CONFIDENCE, None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ModelLoadError(f"{name}: {THRESHOLD_KEY} must be a score between 0 and 1, got {value!r}")
    return float(value), str(rule or "rule not recorded")


def ood_threshold_of(value: Any, rule: Any, name: str) -> tuple[float | None, str | None]:
    """The OOD threshold a model stores (``name``: where) and its rule; (None, None) for a model without
    OOD data, which then never calls a photo foreign. ModelLoadError for a value that is not a finite
    distance (a number, 0 or more)."""
    if value is None:
        return None, None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:
        raise ModelLoadError(f"{name}: {OOD_THRESHOLD_KEY} must be a distance (a number >= 0), got {value!r}")
    return float(value), str(rule or "rule not recorded")


def _json_or_raw(value: str | None) -> Any:
    """A metadata value parsed as JSON, or as it is when it is not JSON (then refused, named, by the
    caller's check)."""
    try:
        return None if value is None else json.loads(value)
    except ValueError:
        return value


def default_device() -> str:
    """The GPU when torch sees one, else the CPU (for a PyTorch model: this imports torch)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, the largest logit subtracted first so that exp cannot overflow."""
    x = logits.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Assessment:
    """One photo's answer: pipeline()'s ranked labels, its OOD score (None: the model has no OOD data)
    and whether that score marks it as foreign, not one of the waste photos the model knows."""

    ranked: list[dict[str, Any]]
    ood_score: float | None
    foreign: bool


@dataclass
class Classifier:
    """A model with its labels and its pipeline()-identical preprocessing; see ``Classifier.load``."""

    labels: list[str]  # in output order (config.id2label)
    pretrained_cfg: dict[str, Any]  # the timm data config the preprocessing comes from
    device: str
    backend: str  # "torch" or "onnx"
    _probabilities: Callable[[np.ndarray], np.ndarray]
    model: torch.nn.Module | None = None  # the PyTorch model (None for ONNX)
    # The app's "not sure" threshold on the top score, and the rule that set it (low_confidence_of); None:
    # the model stores no threshold and this is DEFAULT_LOW_CONFIDENCE.
    low_confidence: float = DEFAULT_LOW_CONFIDENCE
    low_confidence_rule: str | None = None
    # Softmax and OOD scores in one forward (None: softmax only, no OOD score).
    _scores: Scorer | None = None
    # The OOD score above which a photo is foreign, and how it was set; None: the model stores no OOD data
    # and assess() never calls a photo foreign.
    ood_threshold: float | None = None
    ood_rule: str | None = None

    def __post_init__(self) -> None:
        # What pipeline() builds from config.json (timm's eval transform of this data config), in NumPy.
        cfg = self.pretrained_cfg
        size = list(cfg.get("input_size", []))
        if cfg.get("crop_mode", "center") != "center" or len(size) != 3 or size[1] != size[2]:
            raise ModelLoadError(
                f"the model's preprocessing (input_size {size}, crop_mode {cfg.get('crop_mode')!r}) is not "
                "the square centre crop this project trains with; serve a model trained by train.py."
            )
        try:
            self.preprocessing = Preprocessing.from_pretrained_cfg(cfg)
        except (ValueError, KeyError, TypeError) as err:
            raise ModelLoadError(f"the model's preprocessing cannot be served: {err}") from err

    @classmethod
    def load(
        cls, model: str | os.PathLike, device: str | None = None, threads: int | None = None
    ) -> Classifier:
        """A local model/ folder (OUT/model), a Hub id (through ``trashnet_hf.hub.client``, cache first), an
        exported ``.onnx`` file, or one on the Hub, ``USER/NAME/FILE.onnx`` (that file alone is fetched).
        ``device``: "cuda", "cpu", ...; default the GPU when there is one. ``threads``: onnxruntime's
        intra-op threads for an ONNX model (default: its own); a PyTorch model uses torch's setting."""
        path = Path(model)
        if path.suffix == ".onnx":
            reference = None if path.exists() else hub.file_reference(str(model))
            if reference is not None and not Path(reference[0].split("/")[0]).exists():
                hint = f"(No local file {str(model)!r} exists either.)"
                path = hub.download_file(*reference, hint=hint)
            return cls._from_onnx(path, device, threads)
        device = device or default_device()
        if path.is_dir():
            folder = path
        elif path.exists():
            raise ModelLoadError(f"{str(model)!r} is a file; pass a model folder, a .onnx file or a Hub id.")
        elif hub.is_repo_id(str(model)):  # a bare word is likelier a mistyped folder
            folder = hub.download_model(str(model), hint=f"(No local folder {str(model)!r} exists either.)")
        else:
            raise ModelLoadError(
                f"model {str(model)!r} does not exist; pass a model folder (OUTPUT_DIR/model), a .onnx file "
                "or a Hub id (user/name)."
            )
        from trashnet_hf.core.model import load_model  # torch, transformers and timm: a PyTorch model only

        return cls.from_model(load_model(folder), device)

    @classmethod
    def from_model(cls, model: torch.nn.Module, device: str) -> Classifier:
        """A Classifier over a loaded PyTorch model (``trashnet_hf.core.model.load_model``)."""
        import torch

        cuda = torch.device(device).type == "cuda"
        model = model.to(device).eval()
        if cuda:
            model = model.to(memory_format=torch.channels_last)

        from trashnet_hf.core import ood

        scorer = ood.scorer_of(model)
        if scorer is not None:
            scorer = scorer.to(device)

        def to_device(pixel_values: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(pixel_values).to(device, non_blocking=True)
            return x.contiguous(memory_format=torch.channels_last) if cuda else x

        @torch.inference_mode()
        def probabilities(pixel_values: np.ndarray) -> np.ndarray:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = model(pixel_values=to_device(pixel_values)).logits
            return logits.float().softmax(-1).cpu().numpy()  # the batch's one host transfer

        @torch.inference_mode()
        def scores(pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            if scorer is None:
                return probabilities(pixel_values), None
            x = to_device(pixel_values).to(model.dtype)  # as the wrapper's forward casts it
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                features, logits = ood.features_and_logits(model.timm_model, x)
            both = torch.cat([logits.float().softmax(-1), scorer(features)[:, None]], dim=1)
            both = both.cpu().numpy()  # one host transfer for both
            return both[:, :-1], both[:, -1]

        return cls._torch(model, device, probabilities, scores)

    @classmethod
    def _torch(cls, model: torch.nn.Module, device: str, probabilities: Any, scores: Scorer) -> Classifier:
        from trashnet_hf.core import ood

        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        logger.info("Loaded a %d-class PyTorch model on %s", len(names), device)
        cfg = model.config
        rule = getattr(cfg, THRESHOLD_RULE_KEY, None)
        low = low_confidence_of(getattr(cfg, THRESHOLD_KEY, None), rule, "config.json")
        scorer = ood.scorer_of(model)
        stored = (scorer.threshold, scorer.rule) if scorer is not None else (None, None)
        threshold = ood_threshold_of(*stored, "config.json")
        return cls(
            names, dict(cfg.pretrained_cfg), device, "torch", probabilities, model, *low, scores, *threshold
        )

    @classmethod
    def _from_onnx(cls, path: Path, device: str | None, threads: int | None) -> Classifier:
        import onnxruntime as ort  # optional dependency: only an .onnx model needs it

        if not path.is_file():
            raise ModelLoadError(
                f"ONNX model {str(path)!r} does not exist; export one with "
                "`trashnet-hf export OUT/model --output FILE.onnx`."
            )
        providers = ["CPUExecutionProvider"]
        # No device named: the GPU when onnxruntime has one (torch is not asked: it may not be installed).
        wants_cuda = device is None or device.split(":")[0] == "cuda"
        if wants_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf

        options = ort.SessionOptions()
        if threads is not None:  # a CPU Space has 2 vCPUs; more threads only contend
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except (Fail, InvalidGraph, InvalidProtobuf) as err:  # onnxruntime's errors are plain Exceptions
            raise ModelLoadError(f"{path}: not a loadable ONNX model ({str(err).splitlines()[0]})") from err
        meta = session.get_modelmeta().custom_metadata_map
        if ONNX_LABELS_KEY not in meta or ONNX_CFG_KEY not in meta:
            raise ModelLoadError(
                f"{path} lacks the labels and preprocessing this project's exporter writes into its "
                "metadata; export it with `trashnet-hf export`."
            )

        def probabilities(pixel_values: np.ndarray) -> np.ndarray:
            (logits,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: pixel_values})
            return softmax(logits)

        has_ood = ONNX_OOD_OUTPUT in {o.name for o in session.get_outputs()}

        def scores(pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            if not has_ood:
                return probabilities(pixel_values), None
            logits, ood_score = session.run([ONNX_OUTPUT, ONNX_OOD_OUTPUT], {ONNX_INPUT: pixel_values})
            return softmax(logits), ood_score

        labels = json.loads(meta[ONNX_LABELS_KEY])
        logger.info("Loaded a %d-class ONNX model (%s)", len(labels), ", ".join(session.get_providers()))
        ran_on = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        stored = meta.get(ONNX_THRESHOLD_KEY)
        with contextlib.suppress(ValueError):  # not JSON: low_confidence_of refuses it, the value named
            stored = None if stored is None else json.loads(stored)
        low = low_confidence_of(stored, meta.get(ONNX_RULE_KEY), f"{path.name}'s metadata")
        threshold = ood_threshold_of(
            _json_or_raw(meta.get(ONNX_OOD_THRESHOLD_KEY)),
            meta.get(ONNX_OOD_RULE_KEY),
            f"{path.name}'s metadata",
        )
        cfg = json.loads(meta[ONNX_CFG_KEY])
        return cls(labels, cfg, ran_on, "onnx", probabilities, None, *low, scores, *threshold)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The model input, float32 (3, H, W), of one image: bit for bit what pipeline()'s image processor
        gives (``Preprocessing.to_array``; a non-RGB image is converted to RGB first)."""
        return self.preprocessing.to_array(image)

    def probabilities(self, pixel_values: np.ndarray) -> np.ndarray:
        """Softmax scores (N, classes) of a preprocessed float32 batch (N, 3, H, W), on the host."""
        return self._probabilities(np.ascontiguousarray(pixel_values, dtype=np.float32))

    def ranked(self, probs: np.ndarray, top_k: int | None = None) -> list[list[dict[str, Any]]]:
        """pipeline()'s output for each row of ``probs``: label/score dicts, best first (a stable sort,
        so ties keep the label order as pipeline()'s do), the first ``top_k`` (None: all)."""
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1 (or None for all classes), got {top_k}")
        k = len(self.labels) if top_k is None else min(top_k, len(self.labels))
        out = []
        for row in probs.tolist():
            order = sorted(range(len(row)), key=lambda i, r=row: r[i], reverse=True)[:k]
            out.append([{"label": self.labels[i], "score": row[i]} for i in order])
        return out

    def assess_batch(self, pixel_values: np.ndarray, top_k: int | None = None) -> list[Assessment]:
        """``assess`` of a preprocessed float32 batch (N, 3, H, W): one forward gives the scores of both."""
        x = np.ascontiguousarray(pixel_values, dtype=np.float32)
        probs, ood_scores = self._scores(x) if self._scores is not None else (self._probabilities(x), None)
        scores = [None] * len(probs) if ood_scores is None else ood_scores.tolist()
        limit = self.ood_threshold
        return [
            Assessment(ranked, score, score is not None and limit is not None and score > limit)
            for ranked, score in zip(self.ranked(probs, top_k), scores, strict=True)
        ]

    def assess(self, images: Sequence[Image.Image], top_k: int | None = None) -> list[Assessment]:
        """Per image: ``predict()``'s ranked labels (the same top-1: the OOD score never changes it), the
        OOD score and whether it is above ``ood_threshold`` (never, for a model without OOD data)."""
        if not images:
            return []
        return self.assess_batch(np.stack([self.preprocess(im) for im in images]), top_k)

    def predict(self, images: Sequence[Image.Image], top_k: int | None = None) -> list[list[dict[str, Any]]]:
        """Per image: ``[{"label", "score"}, ...]`` sorted by score, like pipeline(); top_k None = all."""
        if not images:
            return []
        batch = np.stack([self.preprocess(im) for im in images])
        return self.ranked(self.probabilities(batch), top_k)
