"""Report figures: real PNGs with the right content, and bad input named in the error."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from trashnet_hf.training.plots import (
    confusion_matrix_figure,
    curves_figure,
    plot_confusion_matrix,
    plot_curves,
)

CLASSES = ["cardboard", "glass", "metal"]
CM = [[5, 1, 0], [2, 7, 0], [0, 3, 12]]
HISTORY = [
    {"epoch": 1, "train_loss": 1.2, "val_loss": 1.0, "train_accuracy": 0.5, "val_accuracy": 0.55},
    {"epoch": 2, "train_loss": 0.8, "val_loss": 0.9, "train_accuracy": 0.7, "val_accuracy": 0.6},
    {"epoch": 3, "train_loss": 0.5, "val_loss": 0.85, "train_accuracy": 0.85, "val_accuracy": 0.66},
]


def _assert_png(path: Path, min_bytes: int = 5_000) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_bytes
    with Image.open(path) as img:
        img.load()
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert pixels.std() > 10  # not a blank canvas
    return pixels


def test_confusion_matrix_png_has_counts_and_labels(tmp_path: Path) -> None:
    out = plot_confusion_matrix(CM, CLASSES, tmp_path / "sub" / "confusion_matrix.png")
    assert out == tmp_path / "sub" / "confusion_matrix.png"
    _assert_png(out)
    plt_figs_before = plt.get_fignums()

    fig = confusion_matrix_figure(CM, CLASSES, title="Confusion matrix (val)")
    ax = fig.axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    # Row = truth, column = prediction: cell (1, 0) is "glass predicted as cardboard".
    assert cells == {(r, c): str(CM[r][c]) for r in range(3) for c in range(3)}
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert ax.get_xlabel() == "Predicted class" and ax.get_ylabel() == "True class"
    assert ax.get_title() == "Confusion matrix (val)"
    assert plt.get_fignums() == plt_figs_before  # nothing registered with pyplot


def test_curves_png_two_panels_with_legends(tmp_path: Path) -> None:
    out = plot_curves(HISTORY, tmp_path / "curves.png")
    _assert_png(out)

    fig = curves_figure(HISTORY)
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_ylabel() == "Loss" and acc_ax.get_ylabel() == "Accuracy"
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["train", "validation"]
    val_acc = acc_ax.get_lines()[1]
    assert list(val_acc.get_xdata()) == [1, 2, 3]
    assert list(val_acc.get_ydata()) == [0.55, 0.6, 0.66]
    assert acc_ax.get_ylim() == (0.0, 1.02)


def test_curves_without_train_accuracy(tmp_path: Path) -> None:
    history = [{k: v for k, v in item.items() if k != "train_accuracy"} for item in HISTORY]
    history[1]["train_accuracy"] = None
    fig = curves_figure(history)
    _, acc_ax = fig.axes
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == ["validation"]
    _assert_png(plot_curves(history, tmp_path / "curves.png"))


def test_single_epoch_is_plotted(tmp_path: Path) -> None:
    _assert_png(plot_curves(HISTORY[:1], tmp_path / "curves.png"))


@pytest.mark.parametrize(
    ("cm", "names", "message"),
    [
        ([[1, 2, 3], [4, 5, 6]], CLASSES, "square"),
        ([1, 2, 3], CLASSES, "square"),
        ([[1, 2], [3, 4]], CLASSES, "2 x 2 but there are 3 class names"),
        ([[1, -1], [0, 2]], CLASSES[:2], "non-negative integer"),
        ([[0.5, 1], [0, 2]], CLASSES[:2], "non-negative integer"),
    ],
)
def test_bad_confusion_matrix_is_named(tmp_path: Path, cm: list, names: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plot_confusion_matrix(cm, names, tmp_path / "cm.png")
    assert not (tmp_path / "cm.png").exists()


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ([], "history is empty"),
        ([{"epoch": 1, "train_loss": 1.0, "val_accuracy": 0.5}], r"history\[0\] lacks val_loss"),
        ([HISTORY[0], {"epoch": 2, "train_loss": 1.0, "val_loss": None}], r"history\[1\] lacks val_loss"),
    ],
)
def test_bad_history_is_named(tmp_path: Path, history: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plot_curves(history, tmp_path / "curves.png")
