"""Evaluating a model on a prepared split, identically on one process or many.

Predictions are collected with ``accelerator.gather_for_metrics``, which drops the samples Accelerate
repeats to even out the last batch, so N processes give exactly the single-process numbers.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from transformers import HfArgumentParser

from trashnet_hf.config import ConfigError, DataConfig
from trashnet_hf.data import prepare_data
from trashnet_hf.data.loader import make_loader
from trashnet_hf.data.transforms import EvalTransform
from trashnet_hf.metrics import compute_metrics
from trashnet_hf.model import load_model, preprocessing_of


@dataclass
class Predictions:
    """A split's predictions, in dataset order, on the host."""

    labels: np.ndarray
    preds: np.ndarray
    probs: np.ndarray
    loss: float  # mean cross-entropy, without label smoothing, so splits compare on one scale

    def metrics(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {"loss": self.loss, **compute_metrics(self.preds, self.labels, class_names)}


@torch.inference_mode()
def predict(
    accelerator: Accelerator, model: nn.Module, loader: DataLoader, transform: nn.Module
) -> Predictions:
    """Run ``model`` over ``loader`` (uint8 batches) and gather every process's predictions."""
    was_training = model.training
    model.eval()
    probs, labels, losses = [], [], []
    for batch in loader:
        logits = model(pixel_values=transform(batch["pixels"])).logits.float()
        loss = F.cross_entropy(logits, batch["label"], reduction="none")
        p, y, lo = accelerator.gather_for_metrics((logits.softmax(-1), batch["label"], loss))
        probs.append(p)
        labels.append(y)
        losses.append(lo)
    model.train(was_training)
    # One transfer to the host at the end, not one per batch.
    all_probs = torch.cat(probs).cpu().numpy()
    return Predictions(
        labels=torch.cat(labels).cpu().numpy(),
        preds=all_probs.argmax(-1),
        probs=all_probs,
        loss=float(torch.cat(losses).mean().cpu()),
    )


@dataclass
class EvalArgs:
    """``python -m trashnet_hf.evaluation``: metrics of a saved model on one prepared split."""

    model_dir: str = field(metadata={"help": "Folder written by training (OUT/model)."})
    split: str = field(default="test", metadata={"help": "Split to evaluate: train, val or test."})
    eval_batch_size: int = field(default=64, metadata={"help": "Images per device per step."})
    metrics_file: str | None = field(default=None, metadata={"help": "Write the metrics here as JSON."})


def main(argv: list[str] | None = None) -> int:
    """Evaluate a saved model with the data flags of training; works under ``accelerate launch``."""
    parser = HfArgumentParser((EvalArgs, DataConfig), description=main.__doc__)
    try:
        args, data_cfg = parser.parse_args_into_dataclasses(args=argv)
    except ConfigError as err:
        parser.error(str(err))
    if args.split not in ("train", "val", "test"):
        parser.error(f"--split must be train, val or test, got {args.split!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    accelerator = Accelerator()
    model = load_model(args.model_dir)
    pre = preprocessing_of(model)
    # The stored image size must be the one the model was trained with: take it from the model.
    data_cfg = replace(
        data_cfg, image_size=pre.image_size, crop_pct=pre.crop_pct, interpolation=pre.interpolation
    )
    with accelerator.main_process_first():
        data = prepare_data(data_cfg)
    loader = make_loader(data.splits[args.split], args.eval_batch_size, shuffle=False)
    model, loader = accelerator.prepare(model, loader)
    metrics = predict(accelerator, model, loader, EvalTransform(pre).to(accelerator.device)).metrics(
        data.class_names
    )
    if accelerator.is_main_process:
        logging.getLogger(__name__).info(
            "%s: accuracy %.4f, macro-F1 %.4f on %d images (%d processes)",
            args.split,
            metrics["accuracy"],
            metrics["macro_f1"],
            sum(sum(row) for row in metrics["confusion_matrix"]),
            accelerator.num_processes,
        )
        if args.metrics_file:
            Path(args.metrics_file).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
