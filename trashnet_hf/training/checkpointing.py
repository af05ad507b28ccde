"""A run's output folder and its checkpoints: nothing lost, nothing mixed up.

- A folder holding a previous run is refused unless the run resumes it (``--resume-from-checkpoint``)
  or the user asks to replace it (``--overwrite-output-dir``); checked before any work.
- Checkpoints are Accelerate's (``save_state`` with automatic naming, ``OUT/checkpoints/checkpoint_<n>``,
  the newest ``KEEP`` kept); the TrainerState rides along through ``register_for_checkpointing``.
- A resume must continue the same run: the checkpoint records the settings that give the run its
  meaning (classes, split, batch, schedule, ...) and a mismatch is refused, naming the flags.
"""

from __future__ import annotations

import logging
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from safetensors import SafetensorError

from trashnet_hf.core.config import TrainConfig
from trashnet_hf.core.errors import ConfigError, UserError
from trashnet_hf.data.split import split_fingerprint

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "custom_checkpoint_0.pkl"  # the TrainerState, the one object registered for checkpointing
KEEP = 2  # each holds weights + AdamW moments (~135 MB for ResNet-18)
# What a training run writes; any of the first four marks a folder as holding a run.
RUN_MARKERS = ("config.json", "results.json", "model", CHECKPOINTS)
RUN_OUTPUTS = (
    *RUN_MARKERS,
    "wandb",
    "confusion_matrix.png",
    "curves.png",
    "data_report.json",
    "split_manifest.csv",
)
# Flags whose change alters what a resumed run means (its data, model, batches or schedule).
SIGNATURE_FLAGS = (
    "model_name", "pretrained", "image_size", "crop_pct", "interpolation", "seed", "train_share", "val_share",
    "test_share", "hash_size", "hash_threshold", "batch_size", "gradient_accumulation_steps", "epochs",
    "learning_rate", "warmup_ratio", "weight_decay", "label_smoothing", "layer_decay", "ema_decay",
    "mixup_alpha", "cutmix_alpha", "class_weighting", "near_duplicate_threshold", "ema_warmup_steps",
)  # fmt: skip


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed: unreadable, or from another run."""


def claim_output_dir(cfg: TrainConfig) -> None:
    """Refuse a folder that holds a previous run (unless resuming or overwriting) or cannot be written;
    with ``--overwrite-output-dir``, remove the previous run's outputs first."""
    out = Path(cfg.output_dir)
    previous = [name for name in RUN_MARKERS if (out / name).exists()]
    if previous and cfg.resume_from_checkpoint is None:
        if not cfg.overwrite_output_dir:
            raise ConfigError(
                f"--output-dir {out} holds a previous run ({', '.join(previous)}); pass "
                "--resume-from-checkpoint latest to continue it, --overwrite-output-dir to replace it, "
                "or another --output-dir."
            )
        state = PartialState()
        if state.is_main_process:
            logger.warning("--overwrite-output-dir: removing the previous run's outputs in %s", out)
            for name in RUN_OUTPUTS:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        state.wait_for_everyone()
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as err:
        message = f"--output-dir {out}: cannot write there ({err.strerror}); choose another folder."
        raise ConfigError(message) from None


def number(path: Path) -> int:
    match = re.fullmatch(r"checkpoint_(\d+)", path.name)
    return int(match.group(1)) if match else -1


def checkpoints(out: Path) -> list[Path]:
    """The checkpoints in ``out`` that hold a TrainerState, oldest first."""
    found = [p for p in (out / CHECKPOINTS).glob("checkpoint_*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=number)


def next_number(out: Path) -> int:
    """Accelerate numbers checkpoints from 0 in every process: continue after any already in ``out``."""
    return 1 + max((number(p) for p in (out / CHECKPOINTS).glob("checkpoint_*")), default=-1)


def resolve(cfg: TrainConfig) -> Path | None:
    """The checkpoint ``--resume-from-checkpoint`` names, checked before any work."""
    if cfg.resume_from_checkpoint is None:
        return None
    if cfg.resume_from_checkpoint == "latest":
        found = checkpoints(Path(cfg.output_dir))
        if not found:
            raise ConfigError(
                f"--resume-from-checkpoint latest: no checkpoint in {Path(cfg.output_dir) / CHECKPOINTS}; "
                "leave the flag out to start a new run."
            )
        return found[-1]
    path = Path(cfg.resume_from_checkpoint)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"--resume-from-checkpoint: {path} has no {STATE_FILE}; not a checkpoint folder.")
    return path


def _unreadable(checkpoint: Path, what: str, err: BaseException) -> CheckpointError:
    older = [p for p in checkpoints(checkpoint.parent.parent) if number(p) < number(checkpoint)]
    hint = f"resume from the previous one: --resume-from-checkpoint {older[-1]}" if older else "start anew"
    return CheckpointError(
        f"checkpoint {checkpoint}: {what} cannot be read ({type(err).__name__}: {err}); {hint}."
    )


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The TrainerState saved in ``checkpoint``, as a dict."""
    try:
        return torch.load(checkpoint / STATE_FILE, weights_only=False)
    except (OSError, EOFError, pickle.UnpicklingError, RuntimeError) as err:
        raise _unreadable(checkpoint, STATE_FILE, err) from None


def signature(cfg: TrainConfig, num_processes: int) -> dict[str, Any]:
    """The settings a resume must share with the run it continues (data ones are added later)."""
    return {**{name: getattr(cfg, name) for name in SIGNATURE_FLAGS}, "num_processes": num_processes}


def data_signature(class_names: list[str], manifest: list[dict[str, Any]]) -> dict[str, Any]:
    return {"class_names": list(class_names), "split": split_fingerprint(manifest)}


def _name(key: str) -> str:
    """A signature key as the user knows it: the flag, or (for derived values) the plain name."""
    return f"--{key.replace('_', '-')}" if key in SIGNATURE_FLAGS else f"the {key}"


def check_signature(checkpoint: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a resume whose saved settings differ from this run's, naming each differing flag."""
    diffs = [
        f"{_name(key)} {saved[key]!r} then, {current[key]!r} now"
        for key in current
        if key in saved and saved[key] != current[key] and key not in ("class_names", "split")
    ]
    if "class_names" in saved and saved["class_names"] != current.get("class_names", saved["class_names"]):
        diffs.append(f"classes {saved['class_names']} then, {current['class_names']} now")
    elif "split" in saved and saved["split"] != current.get("split", saved["split"]):
        diffs.append("the images or their split (--data-dir / --dataset contents) differ")
    if diffs:
        raise CheckpointError(
            f"--resume-from-checkpoint {checkpoint} is from another run: {'; '.join(diffs)}. Resume with "
            "the run's own settings and data, or start a new run (another --output-dir)."
        )


def restore(accelerator: Accelerator, checkpoint: Path) -> None:
    """Load model, optimiser, scheduler, sampler, RNG and the registered TrainerState."""
    rng_file = checkpoint / f"random_states_{accelerator.process_index}.pkl"
    if not rng_file.is_file():
        logger.warning("%s is missing from %s: the resume will not be exact.", rng_file.name, checkpoint)
    try:
        accelerator.load_state(str(checkpoint))
    except (OSError, EOFError, pickle.UnpicklingError, RuntimeError, ValueError, SafetensorError) as err:
        raise _unreadable(checkpoint, "its weights or optimiser state", err) from None
