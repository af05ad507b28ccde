"""``trashnet-hf export OUT/model --output model.onnx [--int8]``: the model for serving
without PyTorch.

The file takes ``pixel_values`` (batch, 3, H, W; the batch axis is dynamic) and gives ``logits``; its
``metadata_props`` hold the labels and the timm data config, so ``Classifier.load("model.onnx")`` and
``trashnet-hf predict --model model.onnx`` need nothing else and preprocess as pipeline() does.

Exporter: torch's TorchScript-based one (``dynamo=False``). The torch.export-based default needs the extra
onnxscript package and took 40 s against 1.3 s for EfficientNet-Lite0 on 2 CPU cores, for a graph
onnxruntime runs equally well; a plain CNN has no dynamic control flow that would need torch.export.
Either way the parity check below is what vouches for the file: the export fails unless onnxruntime's
logits are within ``--tolerance`` of PyTorch's on real photos.

``--int8`` adds a statically quantised copy (onnxruntime's QDQ format, calibrated on validation photos),
kept only if its test accuracy is at most ``--max-accuracy-drop`` points below the float model's.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trashnet_hf import SAMPLE_DIR
from trashnet_hf.core import cli
from trashnet_hf.core.errors import ConfigError, UserError
from trashnet_hf.core.manifest import MANIFEST_FILE, read_manifest
from trashnet_hf.core.model import load_model
from trashnet_hf.serving.classifier import (
    ONNX_CFG_KEY,
    ONNX_INPUT,
    ONNX_LABELS_KEY,
    ONNX_OUTPUT,
    ONNX_RULE_KEY,
    ONNX_THRESHOLD_KEY,
    Classifier,
    open_image,
)
from trashnet_hf.serving.predict import expand_paths

logger = logging.getLogger(__name__)

ONNX_INT8_KEY = "trashnet_hf.int8"  # metadata of the int8 file: its accuracy check, as JSON


DEFAULT_OPSET = 17


def opset_range() -> tuple[int, int]:
    """The opsets the installed TorchScript exporter writes (torch 2.x: 7 to 20), capped at what the
    installed onnx package knows."""
    from torch.onnx import _constants  # private, but the exporter's own bounds; stable through torch 2.x

    try:
        import onnx
    except ImportError:
        raise UserError("the ONNX export needs the onnx extra: pip install 'trashnet-hf[onnx]'.") from None

    low = getattr(_constants, "ONNX_MIN_OPSET", 7)
    high = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", DEFAULT_OPSET)
    return low, min(high, onnx.defs.onnx_opset_version())


def _same_file(a: str, b: str | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()


@dataclass
class ExportArgs:
    """Flags of ``trashnet-hf export``."""

    model_dir: str = field(
        metadata={"help": "The model folder a training run wrote (OUTPUT_DIR/model).", cli.POSITIONAL: True}
    )
    output: str = cli.help_field("The .onnx file to write.")
    overwrite: bool = cli.help_field(
        "Replace the output files if they exist (otherwise refused).", default=False
    )
    opset: int = cli.help_field(
        "ONNX opset version, within the range the installed exporter writes (torch 2.x: 7 to 20).",
        default=DEFAULT_OPSET,
    )
    parity_images: int = cli.help_field(
        "Photos the parity check runs on: the run's test photos (split_manifest.csv beside the model "
        "folder), else the sample photos shipped in trashnet_hf/sample.",
        default=32,
    )
    tolerance: float = cli.help_field(
        "Largest |onnxruntime - PyTorch| logit difference the export accepts.", default=1e-4
    )
    int8: bool = cli.help_field(
        "Also write an int8 (static QDQ) model, kept only if its test accuracy drops by at most "
        "--max-accuracy-drop points.",
        default=False,
    )
    int8_output: str | None = cli.help_field(
        "Where the int8 model goes; default: OUTPUT with .int8.onnx.", default=None
    )
    calibration_dir: str | None = cli.help_field(
        "Images the int8 ranges are calibrated on (searched recursively); default: the run's validation "
        "photos listed in split_manifest.csv beside the model folder.",
        default=None,
    )
    test_dir: str | None = cli.help_field(
        "Labelled images for the int8 accuracy check, one folder per class named as the model's labels; "
        "default: the run's test photos listed in split_manifest.csv.",
        default=None,
    )
    calibration_images: int = cli.help_field("At most this many calibration images.", default=200)
    max_accuracy_drop: float = cli.help_field("Largest int8 test-accuracy loss kept, in points.", default=0.5)

    def __post_init__(self) -> None:
        """Raise ConfigError naming the flag for any value that cannot work, before any work starts."""
        for flag, value in (
            ("--parity-images", self.parity_images),
            ("--calibration-images", self.calibration_images),
        ):
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}.")
        if self.tolerance <= 0 or self.max_accuracy_drop < 0:
            raise ConfigError("--tolerance must be above 0 and --max-accuracy-drop at least 0.")
        if self.int8 and self.int8_output is None:
            self.int8_output = str(Path(self.output).with_suffix(".int8.onnx"))
        self._check_opset()
        outputs = [("--output", self.output)] + ([("--int8-output", self.int8_output)] if self.int8 else [])
        for flag, value in outputs:
            if Path(value).suffix != ".onnx":
                raise ConfigError(f"{flag} {value!r} must end in .onnx.")
            cli.check_output(flag, value, self.overwrite)
        if self.int8 and _same_file(self.output, self.int8_output):
            raise ConfigError(
                f"--int8-output {self.int8_output!r} is --output: the int8 model would replace the float "
                "one; name another file (default: OUTPUT with .int8.onnx)."
            )
        for flag, value in (("--calibration-dir", self.calibration_dir), ("--test-dir", self.test_dir)):
            if value is not None and not Path(value).is_dir():
                raise ConfigError(f"{flag} {value!r} is not a folder.")
        if self.int8 and (self.calibration_dir is None or self.test_dir is None) and not self.manifest():
            raise ConfigError(
                f"--int8 needs validation and test photos: {self.model_dir!r} has no {MANIFEST_FILE} "
                "beside it (it is not a training run's model/ folder); pass --calibration-dir and --test-dir."
            )

    def _check_opset(self) -> None:
        low, high = opset_range()
        if not low <= self.opset <= high:
            raise ConfigError(
                f"--opset {self.opset} is outside the range torch's ONNX exporter writes here ({low} to "
                f"{high}); the default, {DEFAULT_OPSET}, suits onnxruntime."
            )

    def manifest(self) -> Path | None:
        path = Path(self.model_dir).parent / MANIFEST_FILE
        return path if path.is_file() else None


class ExportError(UserError):
    """The exported model does not behave like the PyTorch model; nothing is written."""


class Int8RefusedError(UserError):
    """The int8 model lost more test accuracy than allowed: the float model stays, the int8 one is not
    written."""


@dataclass
class Photos:
    """Images to run, with their labels (model label names) where known."""

    paths: list[Path]
    labels: list[str] | None = None
    source: str = ""


def manifest_photos(manifest: Path, split: str, limit: int | None = None) -> Photos:
    """The rows of one split of a training run's manifest whose files are on this machine."""
    rows = [r for r in read_manifest(manifest) if r["split"] == split and Path(r["path"]).is_file()]
    rows = rows[:limit] if limit else rows
    return Photos([Path(r["path"]) for r in rows], [r["label"] for r in rows], f"{split} rows of {manifest}")


def folder_photos(folder: Path, limit: int | None = None, labelled: bool = False) -> Photos:
    """Images under ``folder``; with ``labelled``, each labelled by its top folder (a class folder)."""
    paths = expand_paths([str(folder)])[:limit] if limit else expand_paths([str(folder)])
    labels = [p.relative_to(folder).parts[0] for p in paths] if labelled else None
    return Photos(paths, labels, str(folder))


def batches(classifier: Classifier, paths: Sequence[Path], batch_size: int = 32) -> Iterator[torch.Tensor]:
    """Preprocessed batches of ``paths`` (pipeline()'s transform); an unreadable file stops the export."""
    for start in range(0, len(paths), batch_size):
        yield torch.stack([classifier.preprocess(open_image(p)) for p in paths[start : start + batch_size]])


def export(
    model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, metadata: dict[str, str]
) -> None:
    """The model's logits graph with a dynamic batch axis, its ``metadata_props`` filled in."""
    import onnx

    class Logits(torch.nn.Module):  # the wrapper's forward returns a ModelOutput; ONNX wants a tensor
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.inner(pixel_values=pixel_values).logits

    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export (see the module docstring).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed.*")
        try:
            torch.onnx.export(
                Logits(model).eval(), (example,), str(path), dynamo=False, opset_version=opset,
                input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
            )  # fmt: skip
        except torch.onnx.errors.OnnxExporterError as err:  # an operator this opset cannot express
            reason = str(err).split(". ")[0]
            raise ExportError(
                f"--opset {opset}: torch cannot export this model at this opset ({reason}); nothing was "
                f"written. Use a newer opset, such as the default {DEFAULT_OPSET}."
            ) from None
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def onnx_logits(session: Any, pixel_values: torch.Tensor) -> np.ndarray:
    return session.run([ONNX_OUTPUT], {ONNX_INPUT: pixel_values.numpy()})[0]


def check_parity(
    model: torch.nn.Module, path: Path, inputs: Sequence[torch.Tensor], tolerance: float
) -> float:
    """The largest |onnxruntime - PyTorch| logit difference over ``inputs``; ExportError above
    ``tolerance``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.inference_mode():
        for x in inputs:
            theirs = onnx_logits(session, x)
            ours = model(pixel_values=x).logits.numpy()
            if theirs.shape != ours.shape:
                raise ExportError(
                    f"{path}: onnxruntime gives logits of shape {theirs.shape}, PyTorch {ours.shape}."
                )
            worst = max(worst, float(np.abs(theirs - ours).max()))
    if worst > tolerance:
        raise ExportError(
            f"{path}: onnxruntime logits differ from PyTorch's by up to {worst:.2e} (over --tolerance "
            f"{tolerance:g}); the export is wrong, nothing was written."
        )
    return worst


def latency_ms(session: Any, batch: torch.Tensor, repeats: int = 10) -> float:
    """Median wall time of one ``session`` run on ``batch``, after a warm-up run."""
    onnx_logits(session, batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        onnx_logits(session, batch)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def quantize_int8(
    fp32: Path, out: Path, calibration: Sequence[torch.Tensor], metadata: dict[str, str]
) -> None:
    """onnxruntime static quantisation, QDQ format, int8 weights per channel, ranges from ``calibration``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.inputs = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.inputs, None)
            return None if x is None else {ONNX_INPUT: x.numpy()}

    with tempfile.TemporaryDirectory() as tmp:
        # onnxruntime's recommended first step: shape inference and graph optimisation before calibration.
        prepared = Path(tmp) / "prepared.onnx"
        # onnxruntime's quantiser logs every rescaled bias at INFO on the root logger: hundreds of lines.
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.WARNING))
        try:
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
        finally:
            root.setLevel(level)
    _set_metadata(out, metadata)  # quantisation rebuilds the model without them


def accuracy(session: Any, inputs: Sequence[torch.Tensor], labels: Sequence[int]) -> float:
    preds = np.concatenate([onnx_logits(session, x).argmax(-1) for x in inputs])
    return float((preds == np.asarray(labels)).mean())


def int8_photos(args: ExportArgs) -> tuple[Photos, Photos]:
    """Calibration photos (validation) and labelled test photos, from the flags or the run's manifest."""
    manifest = args.manifest()
    if args.calibration_dir is not None:
        calibration = folder_photos(Path(args.calibration_dir), args.calibration_images)
    else:
        calibration = manifest_photos(manifest, "val", args.calibration_images)
    test = (
        folder_photos(Path(args.test_dir), labelled=True)
        if args.test_dir
        else manifest_photos(manifest, "test")
    )
    for photos in (calibration, test):
        if not photos.paths:
            raise UserError(
                f"--int8: no images found in {photos.source}; pass --calibration-dir and --test-dir."
            )
    return calibration, test


def int8_export(
    args: ExportArgs, fp32: Path, classifier: Classifier, metadata: dict[str, str]
) -> dict[str, Any]:
    """Quantise, then compare with the float model on the test photos; write ``--int8-output`` only if the
    accuracy loss is within ``--max-accuracy-drop``. Returns the comparison."""
    import onnxruntime as ort

    calibration, test = int8_photos(args)
    unknown = sorted(set(test.labels or []) - set(classifier.labels))
    if unknown:
        raise UserError(f"--int8: {test.source} has classes the model does not know: {', '.join(unknown)}.")
    labels = [classifier.labels.index(name) for name in test.labels or []]
    logger.info("int8: calibrating on %d images (%s)", len(calibration.paths), calibration.source)
    out = Path(args.int8_output or "")
    partial = out.with_suffix(".partial.onnx")
    quantize_int8(fp32, partial, list(batches(classifier, calibration.paths)), metadata)
    test_inputs = list(batches(classifier, test.paths))
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, partial)]
    acc = [accuracy(s, test_inputs, labels) for s in sessions]
    report: dict[str, Any] = {
        "test_images": len(labels), "test_source": test.source, "calibration_images": len(calibration.paths),
        "accuracy_fp32": acc[0], "accuracy_int8": acc[1], "accuracy_change_points": 100 * (acc[1] - acc[0]),
    }  # fmt: skip
    for batch_size in (1, 32):
        x = torch.cat(test_inputs)[:batch_size]
        fp, q = (latency_ms(s, x) for s in sessions)
        report[f"latency_ms_batch{len(x)}"] = {"fp32": fp, "int8": q, "speedup": fp / q}
    logger.info("int8: %s", json.dumps(report))
    drop = -report["accuracy_change_points"]
    if drop > args.max_accuracy_drop:
        partial.unlink()
        raise Int8RefusedError(
            f"int8 model not written: test accuracy {100 * acc[0]:.2f}% -> {100 * acc[1]:.2f}% on "
            f"{len(labels)} images, {drop:.2f} points lost (over --max-accuracy-drop "
            f"{args.max_accuracy_drop:g}); "
            f"the float model {fp32} is written and checked."
        )
    _set_metadata(partial, {**metadata, ONNX_INT8_KEY: json.dumps(report)})
    partial.replace(out)
    logger.info(
        "int8 model written to %s (test accuracy %+.2f points)", out, report["accuracy_change_points"]
    )
    return {**report, "kept": True}


def _set_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))


def parity_photos(args: ExportArgs) -> Photos:
    """Real photos for the parity check: the run's test photos, else the shipped sample; spread over
    the classes (the lists are sorted by class)."""
    manifest = args.manifest()
    if manifest is not None:
        photos = manifest_photos(manifest, "test")
        if photos.paths:
            step = max(1, len(photos.paths) // args.parity_images)
            return Photos(photos.paths[::step][: args.parity_images], None, photos.source)
    sample = folder_photos(SAMPLE_DIR)
    step = max(1, len(sample.paths) // args.parity_images)
    return Photos(sample.paths[::step][: args.parity_images], None, str(SAMPLE_DIR))


def run(args: ExportArgs) -> int:
    model = load_model(args.model_dir).float().eval()
    classifier = Classifier.from_model(model, "cpu")
    photos = parity_photos(args)
    inputs = list(batches(classifier, photos.paths, batch_size=8))
    inputs.append(inputs[0][:1])  # batch 1 too: the batch axis must really be dynamic
    metadata = {
        ONNX_LABELS_KEY: json.dumps(classifier.labels),
        ONNX_CFG_KEY: json.dumps(classifier.pretrained_cfg),
        "trashnet_hf.architecture": str(model.config.architecture),
    }
    if classifier.low_confidence_rule is not None:  # the model's own "not sure" threshold travels with it
        metadata[ONNX_THRESHOLD_KEY] = json.dumps(classifier.low_confidence)
        metadata[ONNX_RULE_KEY] = classifier.low_confidence_rule
    out = Path(args.output)
    partial = out.with_suffix(".partial.onnx")  # renamed into place only once the parity check passes
    try:
        export(model, inputs[0], partial, args.opset, metadata)
        worst = check_parity(model, partial, inputs, args.tolerance)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    logger.info(
        "Wrote %s: onnxruntime logits within %.1e of PyTorch (max |diff|; --tolerance %g) on %d photos (%s)",
        out, worst, args.tolerance, len(photos.paths), photos.source,
    )  # fmt: skip
    if args.int8:
        int8_export(args, out, classifier, metadata)
    return 0


def main(argv: list[str] | None = None, prog: str = "trashnet-hf export") -> int:
    """Export a trained model folder to ONNX (dynamic batch axis, labels and preprocessing in the file's
    metadata), checked against PyTorch on real photos; optionally an int8 copy, checked for accuracy."""
    return cli.run(ExportArgs, run, argv, description=main.__doc__, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
