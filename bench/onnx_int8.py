"""int8 against float32 ONNX for one trained model: test accuracy and CPU latency, in one process.

    python bench/onnx_int8.py OUT/model [--calibration-dir DIR --test-dir DIR]

1. Exports float32 ONNX through the product's exporter (``trashnet-hf export``: parity-checked against
   PyTorch on real photos).
2. Quantises a copy with onnxruntime's static quantisation: QDQ format, int8 weights per channel,
   activation ranges calibrated on the run's validation photos (split_manifest.csv beside OUT/model),
   spread over the classes, or on --calibration-dir.
3. Prints both files' accuracy on the run's test photos (or --test-dir, one folder per class) and their
   latency at batch 1 and 32, timed in alternation in this process, with int8's speed-up over float32.

Both files live in a temporary folder and are deleted. The result on the fine-tuned EfficientNet-Lite0
(docs/serving.md#onnx) is why int8 is not in the product: 5.8 points of test accuracy lost, and slower.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

# onnxruntime and trashnet_hf are imported in the functions that use them, so --help is instant.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_dir", type=Path, help="A training run's model folder (OUT/model).")
    parser.add_argument(
        "--calibration-dir",
        type=Path,
        help="Images to calibrate on (searched recursively); default: the validation photos in "
        "split_manifest.csv beside the model folder.",
    )
    parser.add_argument(
        "--test-dir",
        type=Path,
        help="Labelled test images, one folder per class named as the model's labels; default: the test "
        "photos in split_manifest.csv.",
    )
    parser.add_argument("--calibration-images", type=int, default=200, help="At most this many, spread out.")
    parser.add_argument("--repeats", type=int, default=10, help="Timed runs per latency figure (median).")
    args = parser.parse_args(argv)
    args.manifest = args.model_dir.parent / "split_manifest.csv"
    if (args.calibration_dir is None or args.test_dir is None) and not args.manifest.is_file():
        parser.error(
            f"{args.model_dir} has no split_manifest.csv beside it: pass --calibration-dir and --test-dir."
        )
    for flag, folder in (("--calibration-dir", args.calibration_dir), ("--test-dir", args.test_dir)):
        if folder is not None and not folder.is_dir():
            parser.error(f"{flag} {folder} is not a folder.")
    if min(args.calibration_images, args.repeats) < 1:
        parser.error("--calibration-images and --repeats must be at least 1.")
    return args


def photos(args: argparse.Namespace) -> tuple[list[Path], list[Path], list[str]]:
    """Calibration images; test images and their labels: from the flags, else the run's manifest."""
    from trashnet_hf.core.manifest import read_manifest
    from trashnet_hf.serving.predict import expand_paths

    rows = read_manifest(args.manifest) if args.manifest.is_file() else []
    rows = [r for r in rows if Path(r["path"]).is_file()]
    if args.calibration_dir is not None:
        calibration = expand_paths([str(args.calibration_dir)])
    else:
        calibration = [Path(r["path"]) for r in rows if r["split"] == "val"]
    # The manifest lists photos class by class: a plain head would calibrate on the first classes only.
    step = max(1, len(calibration) // args.calibration_images)
    calibration = calibration[::step][: args.calibration_images]
    if args.test_dir is not None:
        test = expand_paths([str(args.test_dir)])
        labels = [p.relative_to(args.test_dir).parts[0] for p in test]
    else:
        test = [Path(r["path"]) for r in rows if r["split"] == "test"]
        labels = [r["label"] for r in rows if r["split"] == "test"]
    if not calibration or not test:
        raise SystemExit(f"onnx_int8.py: error: no calibration or no test images found ({args.manifest}).")
    return calibration, test, labels


def quantize_int8(fp32: Path, out: Path, calibration: list) -> None:
    """onnxruntime static quantisation, QDQ format, int8 weights per channel, ranges from ``calibration``."""
    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quant_pre_process,
        quantize_static,
    )

    from trashnet_hf.serving.classifier import ONNX_INPUT

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.inputs = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.inputs, None)
            return None if x is None else {ONNX_INPUT: x}

    # onnxruntime's recommended first step: shape inference and graph optimisation before calibration.
    prepared = out.with_suffix(".prepared.onnx")
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)


def latency_ms(sessions: dict, batch, repeats: int) -> dict[str, float]:
    """Median wall time of one run of each session on ``batch``, timed in alternation after a warm-up."""
    from trashnet_hf.serving.onnx import onnx_logits

    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(repeats + 1):
        for name, session in sessions.items():
            start = time.perf_counter()
            onnx_logits(session, batch)
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t[1:]) for name, t in times.items()}  # t[0]: the warm-up


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import numpy as np
    import onnxruntime as ort

    from trashnet_hf.serving import onnx as export_onnx
    from trashnet_hf.serving.classifier import Classifier

    logging.basicConfig(level=logging.WARNING)  # onnxruntime's quantiser logs every rescaled bias at INFO
    calibration, test, labels = photos(args)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        export_onnx.run(export_onnx.ExportArgs(model_dir=str(args.model_dir), output=str(fp32)))
        classifier = Classifier.load(fp32, "cpu")
        unknown = sorted(set(labels) - set(classifier.labels))
        if unknown:
            raise SystemExit(
                f"onnx_int8.py: error: test classes the model does not know: {', '.join(unknown)}."
            )
        quantize_int8(fp32, int8, list(export_onnx.batches(classifier, calibration)))
        inputs = list(export_onnx.batches(classifier, test))
        sessions = {
            p.name: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)
        }
        truth = np.array([classifier.labels.index(name) for name in labels])
        print(f"model {args.model_dir}; calibrated on {len(calibration)} images; {len(test)} test images; "
              f"onnxruntime {ort.__version__}, its default threads")  # fmt: skip
        acc = {}
        for name, session in sessions.items():
            preds = np.concatenate([export_onnx.onnx_logits(session, x).argmax(-1) for x in inputs])
            acc[name] = 100 * float((preds == truth).mean())
        print(f"test accuracy: float32 {acc[fp32.name]:.2f}%, int8 {acc[int8.name]:.2f}% "
              f"({acc[int8.name] - acc[fp32.name]:+.2f} points)")  # fmt: skip
        x = np.concatenate(inputs[:1])
        x32 = np.tile(x, (-(-32 // len(x)), 1, 1, 1))[:32]  # batch 32 even from fewer test images
        for n in (1, 32):
            ms = latency_ms(sessions, x32[:n], args.repeats)
            f, q = ms[fp32.name], ms[int8.name]
            print(f"batch {n:2d}: float32 {f:.1f} ms, int8 {q:.1f} ms: int8 speed-up {f / q:.2f}x (median)")


if __name__ == "__main__":
    main()
