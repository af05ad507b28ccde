"""Evaluating a model on a prepared split, identically on one process or many.

Predictions are collected with ``accelerator.gather_for_metrics``, which drops the samples Accelerate
repeats to even out the last batch, so N processes give exactly the single-process numbers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from trashnet_hf.core import cli
from trashnet_hf.core.config import DataConfig
from trashnet_hf.core.embedder import grouping_embedder
from trashnet_hf.core.errors import ConfigError, UserError
from trashnet_hf.core.files import read_json_object
from trashnet_hf.core.manifest import DROPPED
from trashnet_hf.core.model import load_model, preprocessing_of
from trashnet_hf.data import (
    MANIFEST_FILE,
    REPORT_FILE,
    PreparedData,
    prepare_data,
    read_manifest,
    read_manifest_split,
)
from trashnet_hf.data.loader import make_loader
from trashnet_hf.data.split import SPLITS, split_fingerprint
from trashnet_hf.data.transforms import EvalTransform
from trashnet_hf.training.metrics import compute_metrics


@dataclass
class Predictions:
    """A split's predictions, in dataset order, on the host."""

    labels: np.ndarray
    logits: np.ndarray  # float32 (N, C), as the model gave them: calibration fits on these
    loss: float  # mean cross-entropy, without label smoothing, so splits compare on one scale

    @property
    def preds(self) -> np.ndarray:
        return self.logits.argmax(-1)

    @property
    def probs(self) -> np.ndarray:
        """Softmax scores (float32), computed from the logits on demand."""
        return torch.from_numpy(self.logits).softmax(-1).numpy()

    def metrics(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {"loss": self.loss, **compute_metrics(self.preds, self.labels, class_names)}


@torch.inference_mode()
def predict(
    accelerator: Accelerator, model: nn.Module, loader: DataLoader, transform: nn.Module
) -> Predictions:
    """Run ``model`` over ``loader`` (uint8 batches) and gather every process's logits and labels."""
    was_training = model.training
    model.eval()
    logits, labels, losses = [], [], []
    for batch in loader:
        with accelerator.autocast():  # also for a model accelerate did not wrap (the EMA copy)
            out = model(pixel_values=transform(batch["pixels"])).logits.float()
        loss = F.cross_entropy(out, batch["label"], reduction="none")
        z, y, lo = accelerator.gather_for_metrics((out, batch["label"], loss))
        logits.append(z)
        labels.append(y)
        losses.append(lo)
    model.train(was_training)
    # One transfer to the host at the end, not one per batch.
    return Predictions(
        labels=torch.cat(labels).cpu().numpy(),
        logits=torch.cat(logits).cpu().numpy(),
        loss=float(torch.cat(losses).mean().cpu()),
    )


SPLIT_NAMES = SPLITS


@dataclass
class EvalArgs:
    """``trashnet-hf evaluate``: metrics of a saved model on one prepared split."""

    model_dir: str = field(
        metadata={"help": "Folder written by training (OUTPUT_DIR/model): config.json and model.safetensors."}
    )
    split: Literal["train", "val", "test"] = field(
        default="test",
        metadata={
            "help": "Split to evaluate: train, val or test. The split is the one training made, given the "
            "same images and the same --seed and share flags."
        },
    )
    eval_batch_size: int = field(default=64, metadata={"help": "Images per device per step."})
    metrics_file: str | None = cli.help_field(
        "Write the metrics here as JSON (its folder must exist); default: log them only.", default=None
    )
    overwrite: bool = cli.help_field(
        "Replace --metrics-file if it exists (otherwise refused).", default=False
    )

    def __post_init__(self) -> None:
        """Raise ConfigError naming the flag for any value that cannot work, before any work starts."""
        if self.split not in SPLIT_NAMES:
            raise ConfigError(f"--split must be train, val or test, got {self.split!r}.")
        if self.eval_batch_size < 1:
            raise ConfigError(f"--eval-batch-size must be at least 1, got {self.eval_batch_size}.")
        if self.metrics_file is not None:
            cli.check_output("--metrics-file", self.metrics_file, self.overwrite)


class ClassNameError(UserError):
    """The data has class names the model was not trained on."""


def model_class_names(model: nn.Module) -> list[str]:
    """The model's classes in the order of its outputs (``config.id2label``)."""
    id2label = model.config.id2label
    return [id2label[i] for i in range(model.config.num_labels)]


def label_mapping(data_names: Sequence[str], model_names: Sequence[str], data_dir: str | None) -> np.ndarray:
    """``mapping[data_label] = model_id``, matched by exact name (case included, no guessing).

    The data may hold a subset of the model's classes in any order; a name the model does not know raises
    ClassNameError listing both sets.
    """
    model_id = {name: i for i, name in enumerate(model_names)}
    unknown = [name for name in data_names if name not in model_id]
    if unknown:
        folded = {name.casefold(): name for name in model_names}
        case_only = [
            f"{n!r} vs the model's {folded[n.casefold()]!r}" for n in unknown if n.casefold() in folded
        ]
        source = f"--data-dir {data_dir!r}" if data_dir else "the data"
        raise ClassNameError(
            f"{source} has classes the model was not trained on: {', '.join(map(repr, unknown))}. "
            f"Data classes: {', '.join(data_names)}; model classes: {', '.join(model_names)}. "
            + (f"Names must match exactly, case included ({'; '.join(case_only)}). " if case_only else "")
            + "Rename the class folders to the model's names, or leave the unknown classes out."
        )
    return np.array([model_id[name] for name in data_names], dtype=np.int64)


def _map_labels(labels: list[int], mapping: np.ndarray) -> dict[str, np.ndarray]:
    return {"label": mapping[np.asarray(labels, dtype=np.int64)]}


def relabel(ds: datasets.Dataset, mapping: np.ndarray) -> datasets.Dataset:
    """``ds`` (``pixels``, ``label``) with its labels rewritten through ``mapping`` (data id -> model id).

    An identity mapping returns ``ds`` itself; any other copies the split into memory (no cache files).
    """
    if np.array_equal(mapping, np.arange(len(mapping))):
        return ds
    return ds.select_columns(["pixels", "label"]).map(
        _map_labels,
        input_columns="label",
        batched=True,
        batch_size=1024,
        fn_kwargs={"mapping": mapping},
        features=datasets.Features({"pixels": datasets.Value("binary"), "label": datasets.Value("int64")}),
        keep_in_memory=True,
        desc="Matching labels to the model's classes",
    )


def serving_agreement(model_dir: str | Path, split: datasets.Dataset, batch_size: int = 64) -> dict[str, Any]:
    """Per-image agreement between this project's predictions on a prepared split (stored pixels,
    ``EvalTransform``) and ``pipeline("image-classification")`` on the original files: the check that
    published numbers are what users get. Returns the count and each disagreement with both top-2
    margins (the gap between the two best scores)."""
    from transformers import pipeline  # serving's own code path, imported only for this check

    model = load_model(model_dir)
    names = model_class_names(model)
    # The project's side is training's own evaluation path, predict(), on the stored pixels.
    loader = make_loader(split, batch_size, shuffle=False)
    probs = predict(Accelerator(), model, loader, EvalTransform(preprocessing_of(model))).probs
    classifier = pipeline("image-classification", model=str(model_dir), device="cpu")
    served = classifier(list(split["path"]), top_k=len(names), batch_size=batch_size)
    disagreements = []
    for path, p, top in zip(split["path"], probs.tolist(), served, strict=True):
        mine = sorted(p, reverse=True)
        if names[p.index(mine[0])] != top[0]["label"]:
            disagreements.append(
                {"path": path, "ours": names[p.index(mine[0])], "pipeline": top[0]["label"],
                 "our_margin": mine[0] - mine[1], "pipeline_margin": top[0]["score"] - top[1]["score"]}
            )  # fmt: skip
    return {"images": len(split), "disagreements": disagreements}


SOURCE_FLAGS = ("data_dir", "dataset", "include_originals")  # which photos
SPLIT_FLAGS = (*SOURCE_FLAGS, "seed", "train_share", "val_share", "test_share", "hash_size", "hash_threshold",
               "near_duplicate_threshold")  # fmt: skip


class ForeignSplitError(UserError):
    """The split to evaluate holds images the model's own run put in another split (trained on them)."""


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, UserError, "a training run's JSON file", "restore the training run's file.")


def _same_split_flags(run_dir: Path, data_cfg: DataConfig) -> bool:
    """Whether the run beside the model split the data these flags name, the same way (its results.json
    config; only the source from its data report when the run did not finish)."""
    results, report = run_dir / "results.json", run_dir / REPORT_FILE
    if results.is_file():
        config = _read_json(results).get("config", {})
        ours = {k: getattr(data_cfg, k) for k in SPLIT_FLAGS}
        if config.get("split_manifest"):  # the run reused a split: its seed and grouping flags made none
            ours = {k: v for k, v in ours.items() if k in SOURCE_FLAGS}
        if config.get("data_dir") and data_cfg.data_dir:  # the same folder, however it was spelled
            config["data_dir"] = str(Path(config["data_dir"]).resolve())
            ours["data_dir"] = str(Path(data_cfg.data_dir).resolve())
        return all(config.get(k) == v for k, v in ours.items())
    if not report.is_file():
        return False
    source = _read_json(report).get("source")
    if data_cfg.data_dir is None:
        return source == f"hf://datasets/{data_cfg.dataset}"
    return source is not None and Path(source).resolve() == Path(data_cfg.data_dir).resolve()


@dataclass
class RunSplit:
    """The split the model was trained with: its run's manifest, image (real path) -> split."""

    manifest: Path
    split_of: dict[str, str]


def _split_counts(rows: Sequence[dict[str, str]], class_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Images per split and class, as the data report's "splits" holds them."""
    counts = {s: dict.fromkeys(class_names, 0) for s in SPLITS}
    for r in rows:
        split = counts.setdefault(r["split"], {})
        split[r["label"]] = split.get(r["label"], 0) + 1
    return counts


def recorded_split(model_dir: Path) -> RunSplit | None:
    """The split of the run that trained ``model_dir`` (OUT/model): OUT/split_manifest.csv, checked against
    the split fingerprint the run recorded (results.json's data report, else data_report.json); None when
    the folder sits in no training run (a Hub download, a copied model folder)."""
    run_dir = model_dir.resolve().parent
    manifest, results = run_dir / MANIFEST_FILE, run_dir / "results.json"
    recorded_in = results if results.is_file() else run_dir / REPORT_FILE
    if not (manifest.is_file() and recorded_in.is_file() and (run_dir / "config.json").is_file()):
        return None
    report = _read_json(recorded_in)
    report = report.get("data_report", {}) if recorded_in == results else report
    rows = read_manifest(manifest)
    if "split_fingerprint" in report:
        intact = report["split_fingerprint"] == split_fingerprint(rows)
    else:  # a run from before the fingerprint: its per-class split counts tell most re-splits apart
        intact = _split_counts(rows, report.get("class_names", [])) == report.get("splits")
    if not intact:
        raise UserError(
            f"{manifest} is not the split its run recorded in {recorded_in} (rewritten since, e.g. by "
            "`trashnet-hf data --output-dir` into the run's folder): which images the model was "
            "trained on is unknown. Restore the run's split_manifest.csv, or evaluate a model of a run "
            "whose folder is intact."
        )
    return RunSplit(manifest, {os.path.realpath(r["path"]): r["split"] for r in rows})


def check_not_trained_on(paths: Sequence[str], split: str, record: RunSplit, source: str, hint: str) -> None:
    """Refuse a ``split`` whose images the model's run put in another split: scores on images the model
    was trained (or selected) on are not ``split`` scores. ``source`` names where the split came from."""
    moved = Counter(
        record.split_of[real]
        for real in map(os.path.realpath, paths)
        if record.split_of.get(real, split) not in (split, DROPPED)  # a dropped photo was never trained on
    )
    if moved:
        where = " and ".join(f"{n} in its {s} split" for s, n in sorted(moved.items(), key=lambda kv: -kv[1]))
        raise ForeignSplitError(
            f"{source}: {sum(moved.values())} of its {len(paths)} {split} images were not in the {split} "
            f"split of the model's own run ({where}, per {record.manifest}), so they would be scored as "
            f"unseen though the model was trained or selected on them. {hint}"
        )


def model_split(args: EvalArgs, model_dir: Path, manifest: str | None) -> RunSplit | None:
    """The split the model was trained with, if its folder records it; a ``--split-manifest`` that would
    score images the model was trained on is refused here, before any data work."""
    record = recorded_split(model_dir)
    if record is None:
        logging.getLogger(__name__).warning(
            "%s carries no record of the split it was trained on (it is not the model/ folder of a "
            "training run): nothing can show that the %s images scored here were not trained on.",
            model_dir,
            args.split,
        )
    elif manifest is not None:
        paths = [r["path"] for r in read_manifest(manifest) if r["split"] == args.split]
        hint = f"Pass the run's own --split-manifest {record.manifest}, or leave the flag out."
        check_not_trained_on(paths, args.split, record, f"--split-manifest {manifest}", hint)
    return record


def chosen_manifest(data_cfg: DataConfig, record: RunSplit | None) -> Path | None:
    """The manifest the split is read from: ``--split-manifest``, else the model's own run's when it read
    the same data with the same split flags; None when the split is made again from the data flags."""
    if data_cfg.split_manifest is not None:
        return Path(data_cfg.split_manifest)
    if record is not None and _same_split_flags(record.manifest.parent, data_cfg):
        return record.manifest
    return None


def run_split(
    data: PreparedData, args: EvalArgs, manifest: Path | None, record: RunSplit | None
) -> datasets.Dataset:
    """``--split`` as the training run made it (``manifest``), or made again from the data flags when
    there is none (refused if it holds images the model's run put in another split)."""
    log = logging.getLogger(__name__)
    if manifest is not None:
        log.info("Taking the %s split from %s", args.split, manifest)
        return read_manifest_split(data, manifest, args.split)
    log.info(
        "The %s split is made from the data flags, grouped as training groups (no --split-manifest, and "
        "the model's run read other data or split it with other flags).",
        args.split,
    )
    split = data.splits[args.split]
    if record is not None:
        source = f"the {args.split} split made from the data flags"
        hint = f"Pass the data flags the run was trained with, or --split-manifest {record.manifest}."
        check_not_trained_on(split["path"], args.split, record, source, hint)
    return split


def evaluate(args: EvalArgs, data_cfg: DataConfig) -> int:
    """Evaluate a saved model with the data flags of training; works under ``accelerate launch``."""
    log = logging.getLogger(__name__)
    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        # Checked here rather than in EvalArgs, so the other flags' values are all checked first.
        what = "is not a folder" if model_dir.exists() else "does not exist"
        raise ConfigError(
            f"--model-dir: {args.model_dir!r} {what}; pass the model/ folder a training run wrote "
            "(OUTPUT_DIR/model)."
        )
    # The model first: a broken --model-dir is reported before the data is prepared.
    model = load_model(model_dir)
    record = model_split(args, model_dir, data_cfg.split_manifest)
    model_names = model_class_names(model)
    pre = preprocessing_of(model)
    # The stored image size must be the one the model was trained with: take it from the model.
    data_cfg = replace(
        data_cfg, image_size=pre.image_size, crop_pct=pre.crop_pct, interpolation=pre.interpolation
    )
    accelerator = Accelerator()
    manifest = chosen_manifest(data_cfg, record)
    # A manifest fixes the split, so nothing is embedded; else the split is made as training makes it.
    embedder = grouping_embedder(data_cfg) if manifest is None else None
    with accelerator.main_process_first():
        # --split-manifest picks the images below (any subset the data holds), not the whole split.
        data = prepare_data(replace(data_cfg, split_manifest=None), pre, embedder)
    # Labels are matched by name: the data's label ids index its own (sorted folder) class list.
    mapping = label_mapping(data.class_names, model_names, data_cfg.data_dir)
    split = run_split(data, args, manifest, record)
    if len(split) == 0:
        raise UserError(
            f"--split {args.split} holds no images (--{args.split}-share "
            f"{data_cfg.shares[args.split]:g}); evaluate another split."
        )
    absent = [name for name in model_names if name not in data.class_names]
    if absent and accelerator.is_main_process:
        log.warning(
            "The data has no class %s of the model: support 0, left out of macro-F1 unless predicted.",
            ", ".join(absent),
        )
    loader = make_loader(relabel(split, mapping), args.eval_batch_size, shuffle=False)
    model, loader = accelerator.prepare(model, loader)
    metrics = predict(accelerator, model, loader, EvalTransform(pre).to(accelerator.device)).metrics(
        model_names
    )
    if accelerator.is_main_process:
        log.info(
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


def main(argv: list[str] | None = None, prog: str = "trashnet-hf evaluate") -> int:
    """Metrics of a saved model on one split of the data, prepared with training's data flags.

    Classes are matched by name: the data may hold any subset of the model's classes, in any order; a
    class the model does not know stops the run. Works under `accelerate launch` too.
    """
    return cli.run(
        (EvalArgs, DataConfig),
        evaluate,
        argv,
        description=main.__doc__,
        prog=prog,
    )


if __name__ == "__main__":
    sys.exit(main())
