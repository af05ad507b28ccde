"""``trashnet-hf export OUT/model --output model.onnx``: the model for serving without PyTorch.

The file takes ``pixel_values`` (batch, 3, H, W; the batch axis is dynamic) and gives ``logits`` and, for
a model with OOD data (``core.ood``), a second output ``ood_score`` (batch,) from the same forward pass
(the class means and whitening matrix are constants in the graph); its ``metadata_props`` hold the labels, the
timm data config and the thresholds, so ``Classifier.load("model.onnx")`` and
``trashnet-hf predict --model model.onnx`` need nothing else and preprocess as pipeline() does.

Exporter: torch's TorchScript-based one (``dynamo=False``). The torch.export-based default needs the extra
onnxscript package and took 40 s against 1.3 s for EfficientNet-Lite0 on 2 CPU cores, for a graph
onnxruntime runs equally well; a plain CNN has no dynamic control flow that would need torch.export.
Either way the parity check below is what vouches for the file: the export fails unless onnxruntime's
logits are within ``--tolerance`` of PyTorch's on real photos.
"""

from __future__ import annotations

import json
import logging
import sys
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
from trashnet_hf.core.ood import OodScorer, features_and_logits, scorer_of
from trashnet_hf.serving.classifier import (
    ONNX_CFG_KEY,
    ONNX_INPUT,
    ONNX_LABELS_KEY,
    ONNX_OOD_OUTPUT,
    ONNX_OOD_RULE_KEY,
    ONNX_OOD_THRESHOLD_KEY,
    ONNX_OUTPUT,
    ONNX_RULE_KEY,
    ONNX_THRESHOLD_KEY,
    Classifier,
    open_image,
)
from trashnet_hf.serving.predict import expand_paths

logger = logging.getLogger(__name__)

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


@dataclass
class ExportArgs:
    """Flags of ``trashnet-hf export``."""

    model_dir: str = field(
        metadata={"help": "The model folder a training run wrote (OUTPUT_DIR/model).", cli.POSITIONAL: True}
    )
    output: str = cli.help_field("The .onnx file to write.")
    overwrite: bool = cli.help_field(
        "Replace the output file if it exists (otherwise refused).", default=False
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
        "Largest |onnxruntime - PyTorch| difference of the logits the export accepts; OOD scores (distances "
        "that can run into the thousands) are held to it relative to their size above 1. The OOD flags "
        "must also agree.",
        default=1e-4,
    )

    def __post_init__(self) -> None:
        """Raise ConfigError naming the flag for any value that cannot work, before any work starts."""
        if self.parity_images < 1:
            raise ConfigError(f"--parity-images must be at least 1, got {self.parity_images}.")
        if self.tolerance <= 0:
            raise ConfigError(f"--tolerance must be above 0, got {self.tolerance:g}.")
        self._check_opset()
        if Path(self.output).suffix != ".onnx":
            raise ConfigError(f"--output {self.output!r} must end in .onnx.")
        cli.check_output("--output", self.output, self.overwrite)

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


@dataclass
class Photos:
    """Images to run, and where they came from (for the log)."""

    paths: list[Path]
    source: str


def manifest_photos(manifest: Path, split: str) -> Photos:
    """The files of one split of a training run's manifest that are on this machine."""
    paths = [Path(r["path"]) for r in read_manifest(manifest) if r["split"] == split]
    paths = [p for p in paths if p.is_file()]
    return Photos(paths, f"{split} rows of {manifest}")


def folder_photos(folder: Path) -> Photos:
    """Images under ``folder``, searched recursively."""
    return Photos(expand_paths([str(folder)]), str(folder))


def batches(classifier: Classifier, paths: Sequence[Path], batch_size: int = 32) -> Iterator[np.ndarray]:
    """Preprocessed float32 batches of ``paths`` (pipeline()'s transform); an unreadable file stops the
    export."""
    for start in range(0, len(paths), batch_size):
        yield np.stack([classifier.preprocess(open_image(p)) for p in paths[start : start + batch_size]])


def export(
    model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, metadata: dict[str, str]
) -> None:
    """The model's logits graph (and OOD score, when the model carries a scorer) with a dynamic batch
    axis, its ``metadata_props`` filled in."""
    import onnx

    graph = Graph(model, scorer_of(model)).eval()
    outputs = [ONNX_OUTPUT] if graph.scorer is None else [ONNX_OUTPUT, ONNX_OOD_OUTPUT]

    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export (see the module docstring).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed.*")
        try:
            torch.onnx.export(
                graph, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=[ONNX_INPUT], output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in [ONNX_INPUT, *outputs]},
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


class Graph(torch.nn.Module):
    """What is exported: the logits (the wrapper's forward returns a ModelOutput; ONNX wants tensors),
    and with a scorer the OOD score of the stride-16 stage, from the same pass through the backbone."""

    def __init__(self, inner: torch.nn.Module, scorer: OodScorer | None) -> None:
        super().__init__()
        self.inner, self.scorer = inner, scorer

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.scorer is None:
            return self.inner(pixel_values=pixel_values).logits
        features, logits = features_and_logits(self.inner.timm_model, pixel_values)
        return logits, self.scorer(features)


def onnx_logits(session: Any, pixel_values: np.ndarray) -> np.ndarray:
    """onnxruntime's logits of a float32 batch (N, 3, H, W)."""
    return session.run([ONNX_OUTPUT], {ONNX_INPUT: pixel_values})[0]


def onnx_outputs(session: Any, pixel_values: np.ndarray, ood: bool) -> list[np.ndarray]:
    """onnxruntime's logits (``onnx_logits``) and, with ``ood``, its OOD scores of a float32 batch."""
    outputs = [onnx_logits(session, pixel_values)]
    if ood:
        outputs.append(session.run([ONNX_OOD_OUTPUT], {ONNX_INPUT: pixel_values})[0])
    return outputs


@torch.inference_mode()
def torch_outputs(model: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """PyTorch's answers to compare with the graph's: the model's own logits, and its OOD scores."""
    pixels = torch.from_numpy(x)
    outputs = [model(pixel_values=pixels).logits.numpy()]
    if (scorer := scorer_of(model)) is not None:
        outputs.append(scorer(features_and_logits(model.timm_model, pixels)[0]).numpy())
    return outputs


def check_parity(model: torch.nn.Module, path: Path, inputs: Sequence[np.ndarray], tolerance: float) -> float:
    """The largest |onnxruntime - PyTorch| difference of the logits and OOD scores (these relative to
    max(1, |score|): float32 rounds a distance of 1,000 at about 1e-4) over ``inputs``; ExportError above
    ``tolerance``, or when the two disagree on any photo's OOD flag."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scorer, worst = scorer_of(model), 0.0
    for x in inputs:
        theirs, ours = onnx_outputs(session, x, scorer is not None), torch_outputs(model, x)
        shapes = ([t.shape for t in theirs], [o.shape for o in ours])
        if shapes[0] != shapes[1]:
            raise ExportError(
                f"{path}: onnxruntime gives outputs of shapes {shapes[0]}, PyTorch {shapes[1]}."
            )
        scale = [1.0] + ([np.maximum(1.0, np.abs(ours[1]))] if scorer is not None else [])
        diffs = (np.abs(t - o) / s for t, o, s in zip(theirs, ours, scale, strict=True))
        worst = max(worst, *(float(d.max()) for d in diffs))
        if scorer is not None and scorer.threshold is not None:
            flips = int(((theirs[1] > scorer.threshold) != (ours[1] > scorer.threshold)).sum())
            if flips:
                raise ExportError(
                    f"{path}: onnxruntime and PyTorch disagree on the OOD flag of {flips} photos; the export "
                    "is wrong, nothing was written."
                )
    if worst > tolerance:
        raise ExportError(
            f"{path}: onnxruntime outputs differ from PyTorch's by up to {worst:.2e} (over --tolerance "
            f"{tolerance:g}); the export is wrong, nothing was written."
        )
    return worst


def parity_photos(args: ExportArgs) -> Photos:
    """Real photos for the parity check: the run's test photos, else the shipped sample; spread over
    the classes (the lists are sorted by class)."""
    manifest = args.manifest()
    if manifest is not None:
        photos = manifest_photos(manifest, "test")
        if photos.paths:
            step = max(1, len(photos.paths) // args.parity_images)
            return Photos(photos.paths[::step][: args.parity_images], photos.source)
    sample = folder_photos(SAMPLE_DIR)
    step = max(1, len(sample.paths) // args.parity_images)
    return Photos(sample.paths[::step][: args.parity_images], str(SAMPLE_DIR))


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
    if classifier.ood_threshold is not None:  # and the OOD threshold of its ood_score output
        metadata[ONNX_OOD_THRESHOLD_KEY] = json.dumps(classifier.ood_threshold)
        metadata[ONNX_OOD_RULE_KEY] = classifier.ood_rule or "rule not recorded"
    out = Path(args.output)
    partial = out.with_suffix(".partial.onnx")  # renamed into place only once the parity check passes
    try:
        export(model, torch.from_numpy(inputs[0]), partial, args.opset, metadata)
        worst = check_parity(model, partial, inputs, args.tolerance)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    logger.info(
        "Wrote %s: onnxruntime within %.1e of PyTorch (max |diff| of logits and OOD scores; --tolerance %g) "
        "on %d photos (%s)",
        out, worst, args.tolerance, len(photos.paths), photos.source,
    )  # fmt: skip
    return 0


def main(argv: list[str] | None = None, prog: str = "trashnet-hf export") -> int:
    """Export a trained model folder to ONNX (dynamic batch axis, labels and preprocessing in the file's
    metadata), checked against PyTorch on real photos."""
    return cli.run(ExportArgs, run, argv, description=main.__doc__, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
