"""After calibration: the OOD ("not waste") score's data, fitted on the saved model (``core.ood``).

The train split's pooled stride-16 features (eval transform, no augmentation) give the class means and
the shared covariance; the validation photos' scores set the threshold so that ``--ood-flag-rate`` of
them, real waste photos all, are flagged; the test split's flagged share is the held-out check. Train
photos are not used for the threshold: the Gaussian was fitted on them. The means, the whitening matrix
and the keys are saved with the model.
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
    """Pooled stride-16 features (N, C) float32 and labels of a split, gathered from every process."""
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


def threshold_for(scores: np.ndarray, flag_rate: float) -> float:
    """A threshold that the ``round(flag_rate * N)`` highest of the N ``scores`` lie above (ties aside), so
    that ``flag_rate`` of the validation photos are flagged, to the nearest photo: midway between the
    highest photo kept and the lowest flagged (with none flagged, 0.1% above the highest), so that
    onnxruntime's last-digit differences from PyTorch cannot flip a validation photo."""
    ordered = np.sort(scores).astype(np.float64)
    flagged = round(flag_rate * len(scores))
    kept = ordered[len(scores) - 1 - flagged]
    above = ordered[len(scores) - flagged] if flagged else kept + 1e-3 * abs(kept)
    return float((kept + above) / 2)


def fit(
    layer: str, flag_rate: float, splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> tuple[ood.OodScorer, dict[str, Any]]:
    """The scorer fitted on ``splits`` (train/val/test features of ``layer`` and labels) and results.json's
    "ood" block."""
    scorer = ood.fit_scorer(*splits["train"], layer)
    with torch.inference_mode():
        scores = {s: scorer(torch.from_numpy(splits[s][0])).numpy() for s in ("val", "test")}
    scorer.threshold = threshold_for(scores["val"], flag_rate)
    scorer.rule = (
        f"{100 * (1 - flag_rate):g}th percentile of the validation photos' Mahalanobis distance at "
        f"{layer}: {100 * flag_rate:g}% of real photos flagged"
    )
    flagged = {s: float((v > scorer.threshold).mean()) for s, v in scores.items()}
    block = {
        "method": OOD_METHOD, "layer": layer, "stride": ood.OOD_STRIDE, "width": scorer.whiten.shape[0],
        "threshold": scorer.threshold, "rule": scorer.rule, "flag_rate": flag_rate,
        "fitted_on": len(splits["train"][0]), "shrinkage": ood.SHRINKAGE,
        "bytes": 4 * (scorer.means_.numel() + scorer.whiten.numel()),
        "val_flagged_share": flagged["val"], "test_flagged_share": flagged["test"],
    }  # fmt: skip
    return scorer, block
