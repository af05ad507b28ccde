"""Preparation throughput against a naive per-image loop, and agreement with the serving path, in one run.

    python bench/prepare.py [--data-dir ../shared/data/trashnet] [--num-big 20] [--agreement 200]

Two sets: the real 512x384 TrashNet images, and 4032x3024 copies (made here by upscaling, the size of
the Hub's original photos). Naive = PIL open, convert("RGB"), resize the full image (bicubic, shorter
side to the stored size), centre crop, one process: what a tutorial loop does. Ours = ``prepare_data``
from scratch (empty cache: listing, JPEG draft decoding where the frame stays at least twice the stored
size, EXIF, resize, perceptual hash, Arrow writing, grouping and split) with ``--num-proc`` workers, then
the same call again, served from the cache.

Agreement: on ``--agreement`` files of each set, the stored square after ``EvalTransform`` (what training
evaluates) against what ``pipeline()`` feeds the model (transformers' ``load_image`` and
``TimmWrapperImageProcessor`` on the file), as the max and mean absolute difference in grey levels.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import TimmWrapperImageProcessor
from transformers.image_utils import load_image

from trashnet_hf.core.config import DataConfig
from trashnet_hf.data import prepare_data
from trashnet_hf.data.images import prepare_batch
from trashnet_hf.data.loader import decode_pixels
from trashnet_hf.data.transforms import EvalTransform

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "trashnet"


def naive(files: list[Path], size: int) -> float:
    """Seconds for the naive loop over ``files``."""
    start = time.perf_counter()
    for f in files:
        img = Image.open(f).convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        np.asarray(img.crop((left, top, left + size, top + size)))
    return time.perf_counter() - start


def ours(data_dir: Path, cache: Path, image_size: int, num_proc: int) -> tuple[float, float]:
    """Seconds for a cold and a warm (cached) ``prepare_data`` over ``data_dir``."""
    times = []
    for _ in range(2):
        cfg = DataConfig(
            data_dir=str(data_dir),
            output_dir=str(cache / "out"),
            image_size=image_size,
            num_proc=num_proc,
            cache_dir=str(cache),
        )
        start = time.perf_counter()
        prepare_data(cfg)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def agreement(files: list[Path], image_size: int) -> tuple[float, float]:
    """Max and mean absolute difference, in grey levels, between the training eval path and pipeline()'s
    preprocessing, over ``files``."""
    pre = DataConfig(image_size=image_size).preprocessing
    batch = {"image": [{"path": str(f), "bytes": None} for f in files]}
    rows = prepare_batch(batch, size=pre.resize_size, interpolation=pre.interpolation, hash_size=16)
    ours = EvalTransform(pre)(torch.from_numpy(np.stack([decode_pixels(p) for p in rows["pixels"]])))
    processor = TimmWrapperImageProcessor(pretrained_cfg=pre.to_pretrained_cfg())
    theirs = processor(images=[load_image(str(f)) for f in files], return_tensors="pt")["pixel_values"]
    # Back from normalised units to grey levels: one level is 1 / 255 / std.
    levels = (ours - theirs).abs() * torch.tensor(pre.std).view(1, 3, 1, 1) * 255
    return float(levels.max()), float(levels.mean())


def make_big_copies(src: Path, dst: Path, per_class: int) -> int:
    """4032x3024 JPEG copies (quality 90) of the first ``per_class`` images of each class."""
    n = 0
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.jpg"))[:per_class]:
            Image.open(f).convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC).save(
                dst / cls.name / f.name, quality=90
            )
            n += 1
    return n


def report(name: str, n: int, t_naive: float, t_cold: float, t_warm: float) -> None:
    print(
        f"{name:<22} {n:>5} images | naive {n / t_naive:8.1f} img/s | ours cold {n / t_cold:8.1f} img/s "
        f"({t_naive / t_cold:5.1f}x) | ours cached {n / t_warm:9.1f} img/s ({t_naive / t_warm:6.1f}x)"
    )


def report_agreement(files: list[Path], n: int, image_size: int) -> None:
    picked = files[:: max(1, len(files) // n)][:n]  # spread over the classes
    worst, mean = agreement(picked, image_size)
    print(f"{'':<22} {len(picked):>5} images | vs pipeline(): max {worst:.2f}, mean {mean:.4f} grey levels")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="ImageFolder of 512x384 JPEGs.")
    parser.add_argument("--num-big", type=int, default=20, help="4032x3024 copies to make per class.")
    parser.add_argument("--image-size", type=int, default=224, help="Model input size (stored at /0.875).")
    parser.add_argument("--num-proc", type=int, default=1, help="Worker processes for ours.")
    parser.add_argument("--agreement", type=int, default=200, help="Files per set to compare with serving.")
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        parser.error(f"--data-dir: {args.data_dir} does not exist")
    logging.basicConfig(level=logging.WARNING)
    datasets.disable_progress_bars()
    size = DataConfig(image_size=args.image_size).preprocessing.resize_size
    print(f"stored size {size}px, {args.num_proc} process(es) for ours, {os.cpu_count()} CPU core(s)")

    work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        files = sorted(args.data_dir.glob("*/*.jpg"))
        t_naive = naive(files, size)
        t_cold, t_warm = ours(args.data_dir, work / "cache-small", args.image_size, args.num_proc)
        report("512x384 (real)", len(files), t_naive, t_cold, t_warm)
        report_agreement(files, args.agreement, args.image_size)

        n_big = make_big_copies(args.data_dir, work / "big", args.num_big)
        big_files = sorted((work / "big").glob("*/*.jpg"))
        t_naive = naive(big_files, size)
        t_cold, t_warm = ours(work / "big", work / "cache-big", args.image_size, args.num_proc)
        report("4032x3024 (upscaled)", n_big, t_naive, t_cold, t_warm)
        report_agreement(big_files, args.agreement, args.image_size)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
