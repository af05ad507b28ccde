"""Training throughput: the real data pipeline + training step against the bare model, in one run.

    python bench/train_throughput.py [--data-dir ../shared/data/trashnet] [--image-size 224]

"pipeline": batches from the prepared split (Arrow slice -> uint8 tensor -> device -> per-sample
augmentation -> normalise) feeding forward, backward and AdamW step. "bare": the same model, loss and
optimiser on one synthetic normalised batch of the same shape that already sits on the device. The two
are timed in alternating blocks so drift (thermal, other load) hits both; the figure is the median.
Goal: the pipeline costs at most 5%.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F

from trashnet_hf.core.config import DataConfig
from trashnet_hf.core.model import build_model
from trashnet_hf.data import prepare_data
from trashnet_hf.data.loader import make_loader
from trashnet_hf.data.transforms import TrainTransform
from trashnet_hf.training.loop import tune_cpu_allocator

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "trashnet"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA if DEFAULT_DATA.is_dir() else ROOT / "trashnet_hf" / "sample",
        help="ImageFolder to prepare.",
    )
    parser.add_argument("--image-size", type=int, default=224, help="Model input size.")
    parser.add_argument("--batch-size", type=int, default=32, help="Images per step.")
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per block.")
    parser.add_argument("--blocks", type=int, default=3, help="Alternating timed blocks per mode.")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for the pipeline.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    datasets.disable_progress_bars()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        tune_cpu_allocator()  # as train.py does; both modes run in this process, so both get it
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    cfg = DataConfig(data_dir=str(args.data_dir), image_size=args.image_size, output_dir="/tmp/bench-train")
    data = prepare_data(cfg)
    model = build_model("timm/resnet18.a1_in1k", data.class_names, data.preprocessing, pretrained=False)
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    augment = TrainTransform(data.preprocessing).to(device)
    loader = make_loader(
        data.splits["train"],
        args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast:
            logits = model(pixel_values=x).logits.float()
        F.cross_entropy(logits, y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def batches():
        while True:
            yield from loader

    stream = batches()

    def pipeline_block(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            batch = next(stream)
            pixels = batch["pixels"].to(device, non_blocking=True)
            step(augment(pixels), batch["label"].to(device, non_blocking=True))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n * args.batch_size / (time.perf_counter() - start)

    s = args.image_size
    x_bare = torch.randn(args.batch_size, 3, s, s, device=device).contiguous(
        memory_format=torch.channels_last
    )
    y_bare = torch.randint(0, len(data.class_names), (args.batch_size,), device=device)

    def bare_block(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            step(x_bare, y_bare)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n * args.batch_size / (time.perf_counter() - start)

    pipeline_block(2), bare_block(2)  # warm-up: allocator, kernels, first Arrow reads
    pipe, bare = [], []
    for _ in range(args.blocks):
        pipe.append(pipeline_block(args.steps))
        bare.append(bare_block(args.steps))
    p, b = statistics.median(pipe), statistics.median(bare)
    n_train = len(data.splits["train"])
    print(
        f"device {device}, {torch.get_num_threads()} threads, {s}px, batch {args.batch_size}, {n_train} imgs"
    )
    print(f"bare model   {b:8.1f} img/s   blocks: {', '.join(f'{v:.1f}' for v in bare)}")
    print(f"pipeline     {p:8.1f} img/s   blocks: {', '.join(f'{v:.1f}' for v in pipe)}")
    print(f"pipeline cost: {100 * (1 - p / b):+.1f}% of bare-model throughput (goal: at most 5%)")


if __name__ == "__main__":
    main()
