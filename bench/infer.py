"""Inference speed, in one run: the batch CLI against the bare model, pipeline() latency, ONNX vs PyTorch.

    python bench/infer.py [--model OUT/model] [--images ../shared/data/trashnet] [--batch-size 32]

(a) "predict": the batch CLI's work after start-up (``predict_files``: listing, decoding and preprocessing
    in threads that run ahead of the model, the forward, ranking, CSV writing) against "bare": the same
    Classifier's forward on one batch of the same size that is already preprocessed. Timed in alternating
    blocks so drift hits both; the figure is the median ratio. Goal: at least 0.9.
(b) pipeline("image-classification") on one image file at a time: the latency a user of the Hub model sees.
(c) ONNX Runtime against PyTorch, both float32 on the CPU, at batch 1 and 32. (int8: bench/onnx_int8.py.)

Default model: a random-init resnet18 at 224 px, built offline (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import pipeline

from trashnet_hf.core.model import build_model, save_model
from trashnet_hf.core.preprocessing import Preprocessing
from trashnet_hf.serving import onnx as export_onnx
from trashnet_hf.serving.classifier import Classifier, open_image
from trashnet_hf.serving.predict import expand_paths, predict_files, write_rows

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "trashnet"
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def throughput(classifier: Classifier, files: list[Path], args: argparse.Namespace) -> None:
    """(a) The CLI's images/s against the bare forward's, alternating blocks."""
    batch = np.stack([classifier.preprocess(open_image(p)) for p in files[: args.batch_size]])
    steps = max(1, len(files) // args.batch_size)

    def cli_block() -> float:
        start = time.perf_counter()
        rows = predict_files(classifier, files, args.batch_size, None, args.threads)
        write_rows(rows, "csv", len(classifier.labels), io.StringIO())
        return len(files) / (time.perf_counter() - start)

    def bare_block() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            classifier.probabilities(batch)  # includes its one host transfer per batch, as the CLI's
        sync(classifier.device)
        return steps * len(batch) / (time.perf_counter() - start)

    cli_block(), bare_block()  # warm-up: kernels, allocator, page cache
    cli, bare = [], []
    for _ in range(args.blocks):
        cli.append(cli_block())
        bare.append(bare_block())
    ratios = [c / b for c, b in zip(cli, bare, strict=True)]
    where = f"{args.threads} decoding threads, {classifier.device}"
    print(f"(a) batch {args.batch_size}, {len(files)} images, {where}")
    for name, values in (("predict CLI ", cli), ("bare forward", bare)):
        blocks = ", ".join(f"{v:.1f}" for v in values)
        print(f"    {name} {statistics.median(values):8.1f} img/s   blocks: {blocks}")
    print(f"    ratio        {statistics.median(ratios):8.3f}  (goal >= 0.9)")


def pipeline_latency(model_dir: Path, files: list[Path], device: str, repeats: int) -> None:
    """(b) pipeline() on one file at a time (decode included), and the Classifier on the same."""
    classify = pipeline("image-classification", model=str(model_dir), device=device)
    picks = iter(files * (repeats + 1))
    ms = 1000 * median_time(lambda: classify(str(next(picks))), repeats)
    classifier = Classifier.load(model_dir, device)
    ours = 1000 * median_time(lambda: classifier.predict([open_image(next(picks))]), repeats)
    print(f"(b) single image on {device}: pipeline() {ms:.1f} ms, Classifier.predict {ours:.1f} ms (median)")


def onnx_vs_torch(model_dir: Path, files: list[Path], args: argparse.Namespace) -> None:
    """(c) CPU latency at batch 1 and 32: PyTorch and ONNX Runtime, float32."""
    import onnxruntime as ort

    torch_cpu = Classifier.load(model_dir, "cpu")
    x32 = np.stack([torch_cpu.preprocess(open_image(p)) for p in (files * 32)[:32]])
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_onnx.run(export_onnx.ExportArgs(model_dir=str(model_dir), output=str(fp32)))
        sessions = {"onnx fp32": ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])}
        print(f"(c) CPU latency, ms (median of {args.repeats}; speed-up over torch); torch "
              f"{torch.get_num_threads()} threads, onnxruntime its default")  # fmt: skip
        for n in (1, 32):
            x = x32[:n]
            t = {"torch fp32": median_time(lambda x=x: torch_cpu.probabilities(x), args.repeats)}
            for name, session in sessions.items():
                t[name] = median_time(lambda s=session, x=x: export_onnx.onnx_logits(s, x), args.repeats)
            base = t["torch fp32"]
            print(
                f"    batch {n:2d}: "
                + ", ".join(f"{k} {1000 * v:.1f} ({base / v:.2f}x)" for k, v in t.items())
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="A model folder (OUT/model); default: "
                        "a random-init resnet18 at 224 px saved to a temporary folder.")  # fmt: skip
    images = DEFAULT_IMAGES if DEFAULT_IMAGES.is_dir() else ROOT / "trashnet_hf" / "sample"
    parser.add_argument(
        "--images", type=Path, default=images, help="Folder of photos (searched recursively)."
    )
    parser.add_argument(
        "--max-images", type=int, default=256, help="At most this many photos, spread over it."
    )
    parser.add_argument("--batch-size", type=int, default=32, help="Images per forward, for (a).")
    parser.add_argument("--threads", type=int, default=8, help="Decoding threads of the CLI, for (a).")
    parser.add_argument("--blocks", type=int, default=3, help="Alternating timed blocks per mode, for (a).")
    parser.add_argument("--repeats", type=int, default=10, help="Timed calls per latency figure.")
    parser.add_argument("--device", default=None, help="Device for (a) and (b); default: the GPU if any.")
    parser.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c"], help="Parts to leave out.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    files = expand_paths([str(args.images)])
    files = files[:: max(1, len(files) // args.max_images)][: args.max_images]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp) / "model"
            pre = Preprocessing(image_size=224)
            save_model(build_model("timm/resnet18.a1_in1k", CLASSES, pre, pretrained=False), model_dir)
        print(f"model {args.model or 'random-init resnet18, 224 px'}; images {args.images} ({len(files)})")
        if "a" not in args.skip:
            throughput(Classifier.load(model_dir, device), files, args)
        if "b" not in args.skip:
            pipeline_latency(model_dir, files, device, args.repeats)
        if "c" not in args.skip:
            onnx_vs_torch(model_dir, files, args)


if __name__ == "__main__":
    main()
