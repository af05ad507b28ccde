"""Report figures: the confusion matrix, the training curves and reliability diagrams, saved as PNG.

Figures are built as ``matplotlib.figure.Figure`` objects, never through pyplot, so nothing is left in
pyplot's global figure registry (no leaks across calls, no GUI backend needed on a headless machine).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from trashnet_hf.training.metrics import ReliabilityBins

DPI = 120
CURVE_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy")


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # the Agg canvas, whatever backend pyplot may have selected elsewhere
    fig.savefig(path, format="png", dpi=DPI)
    return path


def confusion_matrix_figure(
    cm: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "Confusion matrix (test)"
) -> Figure:
    """The confusion matrix as a heat map with the count in each cell (rows truth, columns prediction)."""
    counts = np.asarray(cm)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be square (C x C), got shape {counts.shape}")
    if counts.shape[0] != len(class_names):
        raise ValueError(
            f"confusion matrix is {counts.shape[0]} x {counts.shape[1]} but there are {len(class_names)} "
            "class names"
        )
    if counts.size == 0:
        raise ValueError("confusion matrix is empty: no classes")
    if not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0:
        raise ValueError(f"confusion matrix must hold non-negative integer counts, got {counts.dtype}")

    side = max(4.0, 1.0 + 0.7 * len(class_names))
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    # Given an ax, .plot draws on it and makes no pyplot figure. It picks dark or light text per cell,
    # so every count stays readable; "d" writes counts in full (its default turns 12345 into 1.2e+04).
    display = ConfusionMatrixDisplay(confusion_matrix=counts, display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", values_format="d", xticks_rotation=45, colorbar=False)
    fig.colorbar(display.im_, ax=ax, label="images")
    for label in ax.get_xticklabels():
        label.set(ha="right", rotation_mode="anchor")
    ax.set(xlabel="Predicted class", ylabel="True class", title=title)
    return fig


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix (test)",
) -> Path:
    """Save the confusion matrix (rows truth, columns prediction, counts in cells) as a PNG at ``path``."""
    return _save(confusion_matrix_figure(cm, class_names, title), path)


def _column(history: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """One metric per epoch as floats, NaN where missing or None (matplotlib leaves a gap there)."""
    values = [item.get(key) for item in history]
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def curves_figure(history: Sequence[dict[str, Any]]) -> Figure:
    """Loss and accuracy per epoch, train and validation, in two panels."""
    if len(history) == 0:
        raise ValueError("history is empty: no epochs to plot")
    for i, item in enumerate(history):
        missing = [key for key in CURVE_KEYS if item.get(key) is None]
        if missing:
            raise ValueError(f"history[{i}] lacks {', '.join(missing)}")
    epochs = _column(history, "epoch")
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    panels = ((loss_ax, "loss", "Loss"), (acc_ax, "accuracy", "Accuracy"))
    for ax, metric, label in panels:
        for split in ("train", "val"):
            values = _column(history, f"{split}_{metric}")
            if np.isnan(values).all():
                continue  # e.g. no train accuracy recorded: no empty legend entry
            ax.plot(epochs, values, marker="o", label="validation" if split == "val" else "train")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)  # whole epochs only
    accuracies = np.concatenate([_column(history, "train_accuracy"), _column(history, "val_accuracy")])
    if np.nanmin(accuracies) >= 0.0 and np.nanmax(accuracies) <= 1.0:
        acc_ax.set_ylim(0.0, 1.02)  # fractions: the full scale shows how far from perfect
    return fig


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Save loss and accuracy curves per epoch (two panels, with legends) as a PNG at ``path``."""
    return _save(curves_figure(history), path)


def reliability_figure(panels: Sequence[tuple[str, ReliabilityBins]]) -> Figure:
    """Reliability diagrams side by side, one per (title, bins): the accuracy of each confidence bin as a
    bar, its mean confidence as a dot, the diagonal where the two agree, the images per bin above it."""
    if len(panels) == 0:
        raise ValueError("no reliability panels to plot")
    fig = Figure(figsize=(4.5 * len(panels), 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (title, bins) in zip(axes, panels, strict=True):
        centres, width = (bins.edges[:-1] + bins.edges[1:]) / 2, np.diff(bins.edges)
        filled = bins.counts > 0
        ax.bar(centres[filled], bins.accuracy[filled], width[filled], edgecolor="black", label="accuracy")
        ax.plot(centres[filled], bins.confidence[filled], "o", color="tab:red", label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        for x, n in zip(centres[filled], bins.counts[filled], strict=True):
            ax.annotate(str(n), (x, 1.0), ha="center", va="bottom", fontsize=7, color="dimgrey")
        ax.set(
            xlim=(0, 1), ylim=(0, 1.08), xlabel="Confidence (top score)", title=f"{title}, ECE {bins.ece:.3f}"
        )
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Accuracy (images per bin above)")
    axes[0].legend(loc="upper left", bbox_to_anchor=(0.0, 0.92), fontsize=8)  # below the counts
    return fig


def plot_reliability(panels: Sequence[tuple[str, ReliabilityBins]], path: str | Path) -> Path:
    """Save reliability diagrams (e.g. before and after calibration) side by side as a PNG at ``path``."""
    return _save(reliability_figure(panels), path)
