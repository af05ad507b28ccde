"""After calibration: the OOD ("not waste") score's data, fitted on the saved model (``core.ood``).

The train split's penultimate features (eval transform, no augmentation) become the bank; the validation
photos' scores set the threshold so that ``--ood-flag-rate`` of them, real waste photos all, are flagged;
the test split's flagged share is the held-out check. Train photos are not scored against the bank:
each would find itself among its own neighbours. The bank and the keys are saved with the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from torch import nn
from torch.utils.data import DataLoader

from trashnet_hf.core import ood
from trashnet_hf.core.model_meta import OOD_METHOD

logger = get_logger(__name__)  # logs from the main process only


@torch.inference_mode()
def split_features(
    accelerator: Accelerator, model: nn.Module, loader: DataLoader, transform: nn.Module
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (N, D) float32 and labels of a split, gathered from every process."""
    timm_model = accelerator.unwrap_model(model).timm_model
    was_training = timm_model.training
    timm_model.eval()
    features, labels = [], []
    for batch in loader:
        with accelerator.autocast():
            f = ood.features_and_logits(timm_model, transform(batch["pixels"]))[0].float()
        f, y = accelerator.gather_for_metrics((f, batch["label"]))
        features.append(f)
        labels.append(y)
    timm_model.train(was_training)
    return torch.cat(features).cpu().numpy(), torch.cat(labels).cpu().numpy()


def make_bank(features: np.ndarray, labels: np.ndarray, seed: int) -> tuple[torch.Tensor, str | None]:
    """The bank's rows and, when the train split is over MAX_BANK_BYTES as float16, a note on the
    class-balanced subsample taken instead."""
    limit = ood.max_bank_rows(features.shape[1])
    keep = ood.balanced_subsample(labels, limit, seed)
    note = None
    if len(keep) < len(features):
        note = (
            f"{len(features)} train photos x {features.shape[1]} features exceed "
            f"{ood.MAX_BANK_BYTES / 1e6:g} MB as float16: a class-balanced subsample of {len(keep)} is kept"
        )
    return torch.from_numpy(features[keep]), note


def threshold_for(scores: np.ndarray, flag_rate: float) -> float:
    """The validation score that the ``round(flag_rate * N)`` highest of the N ``scores`` lie above (ties
    aside), so that ``flag_rate`` of the validation photos are flagged, to the nearest photo."""
    flagged = round(flag_rate * len(scores))
    return float(np.sort(scores)[len(scores) - 1 - flagged])


def fit(
    k: int, flag_rate: float, seed: int, splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> tuple[ood.OodScorer, dict[str, Any]] | None:
    """The scorer fitted on ``splits`` (train/val/test features and labels) and results.json's "ood"
    block; None (logged) when the train split has fewer than ``k`` photos."""
    train_features, train_labels = splits["train"]
    if len(train_features) < k:
        logger.warning("OOD: skipped, %d train photos are fewer than --ood-k %d", len(train_features), k)
        return None
    bank, note = make_bank(train_features, train_labels, seed)
    scorer = ood.OodScorer(bank, k)
    with torch.inference_mode():
        scores = {s: scorer(torch.from_numpy(splits[s][0])).numpy() for s in ("val", "test")}
    scorer.threshold = threshold_for(scores["val"], flag_rate)
    percentile = f"{100 * (1 - flag_rate):g}th percentile"
    scorer.rule = (
        f"{percentile} of the validation photos' kNN distance (k={k}): {100 * flag_rate:g}% of real photos "
        "flagged"
    )
    flagged = {s: float((v > scorer.threshold).mean()) for s, v in scores.items()}
    block = {
        "method": OOD_METHOD, "k": k, "threshold": scorer.threshold, "rule": scorer.rule,
        "flag_rate": flag_rate, "bank_size": list(scorer.bank.shape),
        "bank_bytes": scorer.bank.numel() * scorer.bank.element_size(), "bank_note": note,
        "val_flagged_share": flagged["val"], "test_flagged_share": flagged["test"],
    }  # fmt: skip
    return scorer, block
