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
from safetensors.torch import save_file
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from trashnet_hf import hub
from trashnet_hf.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "timm/resnet18.a1_in1k"
PRETRAINED_HINT = "Or pass --pretrained false to train from a randomly initialised backbone."
# Source pretrained_cfg keys that stay true once our head and preprocessing replace the checkpoint's;
# the rest (test-time sizes, ImageNet label names, weight URLs, pool size) would describe another model.
_KEPT_CFG_KEYS = ("first_conv", "classifier", "fixed_input_size")


def timm_architecture(model_name: str) -> str:
    """The timm architecture of a Hub model name, without the Hub: "timm/resnet18.a1_in1k" -> "resnet18"."""
    org, _, name = model_name.removeprefix("hf-hub:").rpartition("/")
    arch, _tag = timm.models.split_model_name_tag(name)
    if org not in ("", "timm") or not timm.is_model(arch):
        raise ValueError(
            f"Cannot tell the timm architecture of {model_name!r} offline; "
            f"use a timm model name such as {DEFAULT_MODEL_NAME!r}"
        )
    return arch


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
            folder = hub.download_model(model_name, cache_dir=cache_dir, hint=PRETRAINED_HINT)
            model = _from_timm_folder(folder, class_names, preprocessing)
            base = model_name
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
    model = TimmWrapperForImageClassification.from_pretrained(
        folder, config=config, ignore_mismatched_sizes=True
    )
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
    """Save safetensors weights and a config.json read by pipeline() and by timm's "local-dir:" loader."""
    out = Path(out_dir)
    model.save_pretrained(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    # transformers writes "model_args": null, and timm 1.0.31's local-dir loader calls .get() on it.
    config["model_args"] = config.get("model_args") or {}
    # TimmWrapperConfig drops pretrained_cfg.num_classes when it loads a config; timm's format carries it.
    config["pretrained_cfg"]["num_classes"] = config["num_classes"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    logger.info("Saved model to %s", out)
    return out


def load_model(path: str | Path) -> TimmWrapperForImageClassification:
    """Load a folder written by ``save_model``."""
    model = TimmWrapperForImageClassification.from_pretrained(path)
    _sync_timm_cfg(model)
    return model


def preprocessing_of(model: TimmWrapperForImageClassification) -> Preprocessing:
    """The preprocessing a model was trained with, read back from its ``pretrained_cfg``."""
    return Preprocessing.from_pretrained_cfg(model.config.pretrained_cfg)
