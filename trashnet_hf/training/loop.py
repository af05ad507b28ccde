"""The main job, in stages: setup, data, model, optimisation, the epoch loop, calibration, test, report.

``train`` reads top to bottom on one screen; each stage is one function below it. Runs the same under
``python train.py`` and ``accelerate launch train.py`` (any number of processes, CPU or GPU). W&B is
reached only through Accelerate's trackers (``trashnet_hf.training.tracking``), so the loop has no tracking
branches. Per-step values stay on the device in ``LoopStats`` and are read once every
``--logging-steps``, so the GPU never waits on the host in between.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from trashnet_hf.core import ood
from trashnet_hf.core.config import TrainConfig
from trashnet_hf.core.embedder import grouping_embedder
from trashnet_hf.core.errors import ConfigError
from trashnet_hf.core.model import backbone_preprocessing, build_model, load_model, save_model
from trashnet_hf.core.preprocessing import Preprocessing
from trashnet_hf.core.progress import Progress
from trashnet_hf.data import DataError, PreparedData, prepare_data, write_outputs
from trashnet_hf.data.loader import decode_pixels, make_loader
from trashnet_hf.data.transforms import EvalTransform, TrainTransform
from trashnet_hf.hub import card
from trashnet_hf.training import calibration, checkpointing, plots, recipe, tracking
from trashnet_hf.training import ood as ood_step
from trashnet_hf.training.evaluation import Predictions, predict

logger = get_logger(__name__)  # logs from the main process only
# Accelerate warns on every rotation of the checkpoints we asked it to rotate: one warning per epoch.
logging.getLogger("accelerate.accelerator").addFilter(lambda r: "to make room for new" not in r.getMessage())

SUMMARY_KEYS = ("loss", "accuracy", "macro_f1", "weighted_f1")


@dataclass
class TrainerState:
    """Where training stands; saved in every checkpoint (``register_for_checkpointing``), so a resume
    continues exactly."""

    epoch: int = 0  # the epoch in progress (or the next one, when step_in_epoch == 0)
    step_in_epoch: int = 0  # batches of `epoch` already trained on
    global_step: int = 0  # optimisation steps so far
    best_macro_f1: float = -1.0
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    wandb_run_id: str | None = None
    train_seconds: float = 0.0
    train_images: int = 0
    epoch_totals: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss sum, correct, seen
    signature: dict[str, Any] = field(default_factory=dict)  # what a resume must share (checkpointing)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in fields(self):
            setattr(self, f.name, state.get(f.name, getattr(self, f.name)))


@dataclass
class TrainResult:
    status: str  # "completed", "early_stopped" or "interrupted"
    output_dir: Path
    results: dict[str, Any] | None


@dataclass
class Parts:
    """Everything the loop works with, prepared by Accelerate."""

    accelerator: Accelerator
    data: PreparedData
    model: nn.Module
    train_tf: TrainTransform
    eval_tf: EvalTransform
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int  # optimisation steps of this process over the run (what state.global_step counts)
    objective: recipe.Objective
    ema: ModelEmaV3 | None  # with --ema-decay: the weights that are validated, kept and published

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def update_ema(self, step: int) -> float | None:
        """Average the weights into the EMA after optimisation step ``step``; the decay that acted (None
        without an EMA)."""
        if self.ema is None:
            return None
        return recipe.update_ema(self.ema, self.accelerator.unwrap_model(self.model), step)


def train(cfg: TrainConfig) -> TrainResult:
    """Fine-tune, validate every epoch, keep the best model by validation macro-F1, test it, report."""
    started, out = time.perf_counter(), Path(cfg.output_dir)
    checkpointing.claim_output_dir(cfg)  # a previous run is refused, resumed or (if asked) replaced
    accelerator = setup(cfg, out)  # 1. Accelerate, seed, the trackers' environment
    results = None
    try:
        resume_from, saved, signature = check_resume(cfg, accelerator)  # before any work
        # The backbone's input definition; fetches (or finds cached) pretrained weights before any data
        # work, so offline it fails in seconds.
        with accelerator.main_process_first():
            pre = backbone_preprocessing(
                cfg.model_name, cfg.pretrained, cfg.image_size, cfg.crop_pct, cfg.interpolation, cfg.cache_dir
            )
        logger.info("Preprocessing: %s", pre)
        data = load_data(cfg, accelerator, pre)  # 2. prepared splits
        signature |= {"preprocessing": pre.to_dict()}
        signature |= checkpointing.data_signature(data.class_names, data.manifest)
        if resume_from is not None:  # same classes, same split: before anything in the folder changes
            checkpointing.check_signature(resume_from, saved, signature)
        write_data_outputs(cfg, accelerator, data)
        # Again: making a split draws from the global RNGs (the reference embedder is built at random
        # before its weights load) and reusing one (--split-manifest) does not, nor does a warm cache, so
        # without this the same seed and split trained on other augmentations.
        seed_training(cfg)
        parts = build_parts(cfg, accelerator, data)  # 3-4. model, transforms, loaders, optimiser, schedule
        state = TrainerState(signature=signature)
        accelerator.register_for_checkpointing(state)
        if parts.ema is not None:
            accelerator.register_for_checkpointing(parts.ema)
        if resume_from is not None:
            checkpointing.restore(accelerator, resume_from)
            logger.info(
                "Resumed from %s (epoch %d, step %d)", resume_from, state.epoch + 1, state.global_step
            )
        state.wandb_run_id = tracking.init_trackers(
            accelerator, cfg.wandb_project, asdict(cfg), cfg.run_name, state.wandb_run_id
        )
        status = fit(cfg, parts, state, out)  # 5. the epoch loop: train, validate, checkpoint
        if status != "interrupted":
            calibrated = calibrate_best_model(cfg, parts, state, out)  # 6. temperature scaling on val
            ood_block = fit_ood(cfg, parts, out)  # 6b. the OOD score's train features and val threshold
            metrics = evaluate_best_model(parts, out)  # 7. the (calibrated) best model on every split
            wall_time = time.perf_counter() - started
            results = report(cfg, parts, state, metrics, calibrated, status, wall_time, ood_block)  # 8.
    finally:
        # Also on an error: the W&B run is closed and its folder settings do not outlive this run.
        sync_command = tracking.finish(accelerator)
    if results is not None:
        results["wandb_sync"] = sync_command
    return TrainResult(status, out, results)


# --- 1. Setup -----------------------------------------------------------------------------------------


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory instead of handing it back to the OS after every step.

    By default glibc unmaps large freed blocks and trims the heap, so each training step page-faults its
    fresh batch and activation tensors back in. On the 2-core CPU here that cost 7-10% of a ResNet-18
    step and made the data pipeline look expensive; keeping the memory (what jemalloc and tcmalloc do)
    made both the bare step and the full pipeline ~8% faster and the pipeline's share ~1%
    (bench/train_throughput.py). Returns False where there is no glibc (macOS, musl): nothing changes.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # from glibc's malloc.h
    ok = libc.mallopt(m_trim_threshold, 2**31 - 1)  # never give the heap top back
    ok &= libc.mallopt(m_top_pad, 512 << 20)  # grow the heap in large steps
    ok &= libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum: blocks below 32 MB stay in the heap
    return bool(ok)


def setup(cfg: TrainConfig, out: Path) -> Accelerator:
    """The Accelerator: mixed precision, accumulation, trackers, rotating checkpoints, seeded shuffling."""
    if cfg.report_to == "wandb":
        tracking.configure_wandb(out)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(out), automatic_checkpoint_naming=True, total_limit=checkpointing.KEEP
        ),
        # The shuffle order is a function of (seed, epoch), the same on every process (data_seed; by
        # default Accelerate would take each process's own torch seed): a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )
    accelerator.project_configuration.iteration = checkpointing.next_number(out)
    if precision_that_runs(accelerator) != accelerator.mixed_precision:
        logger.warning(
            "--mixed-precision %s is not available on %s: training in full precision (fp32) instead.",
            accelerator.mixed_precision,
            accelerator.device.type,
        )
    seed_training(cfg)
    if accelerator.device.type == "cpu":
        tune_cpu_allocator()
    return accelerator


def seed_training(cfg: TrainConfig) -> None:
    """Seed the global RNGs with seed + process index: each process draws its own crops, flips, jitter and
    mixup (the same draws on every process would waste the extra batches' augmentation); the run stays
    reproducible for a given process count. Model init (build_model) and shuffling (data_seed) are seeded
    with the seed itself."""
    set_seed(cfg.seed, device_specific=True)


def precision_that_runs(accelerator: Accelerator) -> str:
    """The mixed precision that actually runs: Accelerate quietly skips fp16 autocast on the CPU."""
    return accelerator.mixed_precision if accelerator.native_amp else "no"


def check_resume(
    cfg: TrainConfig, accelerator: Accelerator
) -> tuple[Path | None, dict[str, Any], dict[str, Any]]:
    """The checkpoint to resume (None for a new run), the signature saved in it ({} for none) and this
    run's; a checkpoint from a run with other settings is refused here, before any work."""
    resume_from = checkpointing.resolve(cfg)
    signature = checkpointing.signature(cfg, accelerator.num_processes)
    saved: dict[str, Any] = {}
    if resume_from is not None:
        saved = checkpointing.read_state(resume_from).get("signature", {})
        checkpointing.check_signature(resume_from, saved, signature)
    return resume_from, saved, signature


# --- 2. Data ------------------------------------------------------------------------------------------


def load_data(cfg: TrainConfig, accelerator: Accelerator, pre: Preprocessing) -> PreparedData:
    """Prepare (or read from the cache) and split the data; refuse a train split under one batch.

    Near-duplicate shots are grouped on the reference embedder's features, whatever the model being
    trained, so every model meets the same split (``core.embedder``)."""
    embedder = grouping_embedder(cfg)
    with accelerator.main_process_first():
        data = prepare_data(cfg, pre, embedder)
    r = data.report
    logger.info(
        "Data: %d images, %d bad, %d duplicate groups (%s), %d label conflicts dropped; train/val/test = %s",
        r["num_images"],
        r["num_bad"],
        r["duplicate_groups"],
        r["grouping"]["method"],
        len(r["label_conflicts"]),
        "/".join(str(sum(r["splits"][s].values())) for s in ("train", "val", "test")),
    )
    n_train, per_step = len(data.splits["train"]), cfg.batch_size * accelerator.num_processes
    if n_train < per_step:
        raise DataError(
            f"the train split has {n_train} images, fewer than one batch (--batch-size {cfg.batch_size} x "
            f"{accelerator.num_processes} processes); lower --batch-size or add images."
        )
    return data


def write_data_outputs(cfg: TrainConfig, accelerator: Accelerator, data: PreparedData) -> None:
    """The data report, the split manifest and the run's configuration, beside the model."""
    if accelerator.is_main_process:
        write_outputs(cfg.output_dir, data.report, data.manifest)
        (Path(cfg.output_dir) / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")


# --- 3-4. Model, transforms, loaders, optimisation ----------------------------------------------------


def build_parts(cfg: TrainConfig, accelerator: Accelerator, data: PreparedData) -> Parts:
    """The model with its new head, the device transforms, the loaders, AdamW and the warm-up + cosine
    schedule, all passed through ``accelerator.prepare``; the EMA of the prepared model's weights."""
    device = accelerator.device
    train_loader, eval_loaders = make_loaders(cfg, data, device)
    model = build_model(
        cfg.model_name, data.class_names, data.preprocessing, cfg.pretrained, cfg.cache_dir, cfg.seed
    )
    if cfg.ood_flag_rate > 0:
        try:  # before training, not after: the OOD fit reads timm's feature stages
            ood.ood_stage(model.timm_model)
        except ValueError as err:
            raise ConfigError(f"--model-name {cfg.model_name}: {err}") from None
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups = recipe.param_groups(model.timm_model, cfg.learning_rate, cfg.weight_decay, cfg.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)
    # Counted on the unsharded loader: Accelerate steps the scheduler once per process per update.
    schedule_steps = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps) * cfg.epochs
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, round(cfg.warmup_ratio * schedule_steps), schedule_steps
    )
    model, optimizer, train_loader, scheduler, *prepared = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *eval_loaders.values()
    )
    # Counted on this process's shard: the steps the loop takes (state.global_step), the progress total.
    total_steps = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps) * cfg.epochs
    if (note := recipe.ema_note(cfg.ema_decay, cfg.ema_warmup_steps, total_steps)) is not None:
        logger.warning(note)
    layout = {"channels_last": cfg.channels_last}  # the batches' memory layout, like the model's
    train_tf = TrainTransform(
        data.preprocessing, (cfg.crop_scale_min, 1.0), jitter=cfg.color_jitter, **layout
    )
    return Parts(
        accelerator,
        data,
        model,
        train_tf.to(device),
        EvalTransform(data.preprocessing, **layout).to(device),
        train_loader,
        dict(zip(eval_loaders, prepared, strict=True)),
        optimizer,
        scheduler,
        total_steps,
        make_objective(cfg, data).to(device),
        recipe.make_ema(accelerator.unwrap_model(model), cfg.ema_decay, cfg.ema_warmup_steps),
    )


def make_loaders(
    cfg: TrainConfig, data: PreparedData, device: torch.device
) -> tuple[DataLoader, dict[str, DataLoader]]:
    """The shuffled train loader and the train/val/test evaluation loaders (not yet prepared)."""
    workers = cfg.num_workers if cfg.num_workers is not None else (2 if device.type == "cuda" else 0)
    pin = device.type == "cuda"
    # drop_last: a last batch of one image breaks BatchNorm, and ragged batches skew the loss.
    train_loader = make_loader(
        data.splits["train"], cfg.batch_size, True, cfg.seed, workers, drop_last=True, pin_memory=pin
    )
    eval_loaders = {
        s: make_loader(data.splits[s], cfg.eval_batch_size, False, num_workers=workers, pin_memory=pin)
        for s in ("train", "val", "test")
    }
    return train_loader, eval_loaders


def make_objective(cfg: TrainConfig, data: PreparedData) -> recipe.Objective:
    """The loss: label smoothing, mixup/cutmix and (with --class-weighting balanced) class weights."""
    weights = None
    if cfg.class_weighting == "balanced":
        weights = recipe.balanced_class_weights(data.splits["train"]["label"], len(data.class_names))
    return recipe.Objective(
        len(data.class_names), cfg.label_smoothing, cfg.mixup_alpha, cfg.cutmix_alpha, weights
    )


# --- 5. The epoch loop --------------------------------------------------------------------------------


class StopRequest:
    """SIGTERM / Ctrl-C mark a stop; the loop raises Accelerate's trigger at its next sync point, so
    every process sees it (``check_trigger``), saves a checkpoint and exits."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        logger.warning("%s received: saving a checkpoint and stopping", signal.Signals(signum).name)
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def check(self, accelerator: Accelerator) -> bool:
        """Whether any process was asked to stop: one small all-reduce, so call it at the same points
        in every process."""
        if self.requested:
            accelerator.set_trigger()
        return accelerator.check_trigger()


class LoopStats:
    """The loop's bookkeeping: per-step sums on the device for the logging window and the epoch, read
    back once per window, and the progress display (a bar on a terminal, log lines in a file)."""

    def __init__(self, accelerator: Accelerator, total_steps: int, state: TrainerState) -> None:
        self.accelerator, self.n_proc = accelerator, accelerator.num_processes
        device = accelerator.device
        self.window = torch.zeros(3, device=device)  # loss sum, correct, seen since the last read
        self.epoch = torch.zeros(3, device=device)
        self.window_start, self.window_images = time.perf_counter(), 0
        self.display = Progress(total_steps, "step", state.global_step, show=accelerator.is_main_process)

    def start_epoch(self, carried: list[float]) -> None:
        # A resume mid-epoch carries the epoch's totals so far (summed over processes): spread them.
        self.epoch = torch.tensor(carried, device=self.epoch.device) / self.n_proc

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: plain cross-entropy (the smoothed loss is only the optimisation target), hits."""
        n = labels.shape[0]
        stats = torch.stack(
            [
                F.cross_entropy(logits.detach(), labels, reduction="sum"),
                (logits.argmax(-1) == labels).sum().float(),
                logits.new_full((), n),  # new_full: no host-to-device copy
            ]
        )
        self.window += stats
        self.epoch += stats
        self.window_images += n

    def read_window(self, state: TrainerState) -> dict[str, float]:
        """The window's loss, accuracy and images/s over every process: the window's one host sync."""
        loss, correct, seen = self.accelerator.reduce(self.window, "sum").tolist()
        elapsed = time.perf_counter() - self.window_start
        images = self.window_images * self.n_proc
        state.train_seconds += elapsed
        state.train_images += images
        self.window.zero_()
        self.window_start, self.window_images = time.perf_counter(), 0
        return {"loss": loss / seen, "accuracy": correct / seen, "images_per_s": images / max(elapsed, 1e-9)}

    def epoch_totals(self) -> list[float]:
        """This epoch's loss sum, correct and seen over every process."""
        return self.accelerator.reduce(self.epoch.clone(), "sum").tolist()

    def progress(self, step: int, values: dict[str, float] | None = None) -> None:
        shown = None
        if values is not None:
            shown = {
                "loss": f"{values['loss']:.4f}",
                "acc": f"{values['accuracy']:.3f}",
                "img/s": f"{values['images_per_s']:.0f}",
            }
        self.display.update(step, shown)

    def close(self) -> None:
        self.display.close()


def fit(cfg: TrainConfig, p: Parts, state: TrainerState, out: Path) -> str:
    """Train and validate epoch by epoch; return "completed", "early_stopped" or "interrupted"."""
    stats = LoopStats(p.accelerator, p.total_steps, state)
    val = p.data.splits["val"]
    table_rows = list(range(min(cfg.prediction_table_size, len(val))))
    table_images = [decode_pixels(val[i]["pixels"]) for i in table_rows]
    status = "completed"
    with StopRequest() as stop:
        while state.epoch < cfg.epochs and status == "completed":
            if not train_epoch(cfg, p, state, stats, stop):
                status = "interrupted"
                break
            improved = validate(p, state, out, table_rows, table_images)
            log_epoch(cfg, state, improved)
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
            if cfg.patience and state.epochs_without_improvement >= cfg.patience and state.epoch < cfg.epochs:
                logger.info("Early stopping: no better validation macro-F1 for %d epochs", cfg.patience)
                status = "early_stopped"
            saved = p.accelerator.save_state()
            if stop.check(p.accelerator):
                status = "interrupted"
    stats.close()
    if status == "interrupted":
        # Stopped mid-epoch: the epoch-end checkpoint was not written, so write one here.
        path = p.accelerator.save_state() if state.step_in_epoch else saved
        logger.warning(
            "Stopped at step %d. Resume with: --resume-from-checkpoint %s", state.global_step, path
        )
    return status


def train_epoch(cfg: TrainConfig, p: Parts, state: TrainerState, stats: LoopStats, stop: StopRequest) -> bool:
    """Train one epoch from ``state.step_in_epoch`` on; False if a stop was requested (state then holds
    the position and the epoch's totals, ready for a checkpoint)."""
    acc, model = p.accelerator, p.model
    model.train()
    p.train_loader.set_epoch(state.epoch)
    stats.start_epoch(state.epoch_totals)
    for batch in acc.skip_first_batches(p.train_loader, state.step_in_epoch):
        with acc.accumulate(model):
            images, targets = p.objective.mix(p.train_tf(batch["pixels"]), batch["label"])
            logits = model(pixel_values=images).logits.float()
            loss = p.objective(logits, targets)
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            p.optimizer.step()
            p.scheduler.step()
            p.optimizer.zero_grad(set_to_none=True)
        stats.add(logits, batch["label"])
        state.step_in_epoch += 1
        if not acc.sync_gradients:
            continue
        state.global_step += 1
        ema_decay = p.update_ema(state.global_step)
        window = None
        if state.global_step % cfg.logging_steps == 0:
            window = stats.read_window(state)
            log_step(p, state, window, ema_decay)
            if stop.check(acc):
                state.epoch_totals = stats.epoch_totals()
                return False
        stats.progress(state.global_step, window)
        if cfg.checkpoint_every_steps and state.global_step % cfg.checkpoint_every_steps == 0:
            state.epoch_totals = stats.epoch_totals()
            acc.save_state()
    state.epoch_totals = stats.epoch_totals()
    return True


def log_step(p: Parts, state: TrainerState, window: dict[str, float], ema_decay: float | None) -> None:
    """The logging window's train/* values, the learning rate and the EMA decay that acted."""
    values = {f"train/{k}": v for k, v in window.items()}
    values["train/lr"] = p.scheduler.get_last_lr()[0]
    if ema_decay is not None:
        values["train/ema_decay"] = ema_decay
    values["epoch"] = state.epoch + state.step_in_epoch / len(p.train_loader)
    tracking.log_metrics(p.accelerator, values, step=state.global_step)


def val_predictions(p: Parts) -> tuple[Predictions, dict[str, Any]]:
    """The current model's predictions and metrics on the validation split."""
    preds = predict(p.accelerator, p.eval_model, p.eval_loaders["val"], p.eval_tf)
    return preds, preds.metrics(p.data.class_names)


def validate(p: Parts, state: TrainerState, out: Path, table_rows: list[int], table_images: list) -> bool:
    """Validate, record the epoch, save the model if it is the best so far; return whether it was."""
    acc = p.accelerator
    preds, metrics = val_predictions(p)
    loss_sum, correct, seen = state.epoch_totals
    state.epoch_totals = [0.0, 0.0, 0.0]
    record = {
        "epoch": state.epoch + 1,
        "train_loss": loss_sum / max(seen, 1),  # plain cross-entropy, on augmented batches
        "train_accuracy": correct / max(seen, 1),
        **{f"val_{k}": metrics[k] for k in ("loss", "accuracy", "macro_f1")},
        # The decay of the epoch's last EMA update (0 while the EMA still copies the weights).
        **({"ema_decay": p.ema.get_decay(state.global_step)} if p.ema is not None else {}),
    }
    state.history.append(record)
    improved = metrics["macro_f1"] > state.best_macro_f1
    if improved:
        state.best_macro_f1, state.best_epoch, state.epochs_without_improvement = (
            metrics["macro_f1"],
            state.epoch + 1,
            0,
        )
        if acc.is_main_process:
            save_model(acc.unwrap_model(p.eval_model), out / "model")
    else:
        state.epochs_without_improvement += 1
    tracking.log_metrics(
        acc, {f"val/{k}": metrics[k] for k in ("loss", "accuracy", "macro_f1")}, state.global_step
    )
    if table_rows:  # --prediction-table-size 0: no table
        labels, probs = preds.labels[table_rows], preds.probs[table_rows]
        tracking.log_predictions(acc, table_images, labels, probs, p.data.class_names, step=state.global_step)
    return improved


def log_epoch(cfg: TrainConfig, state: TrainerState, improved: bool) -> None:
    r = state.history[-1]
    logger.info(
        "epoch %2d/%d  train loss %.4f acc %.3f | val loss %.4f acc %.3f macro-F1 %.3f%s",
        r["epoch"],
        cfg.epochs,
        r["train_loss"],
        r["train_accuracy"],
        r["val_loss"],
        r["val_accuracy"],
        r["val_macro_f1"],
        "  (best)" if improved else "",
    )


# --- 6. Calibration -----------------------------------------------------------------------------------


def calibrate_best_model(cfg: TrainConfig, p: Parts, state: TrainerState, out: Path) -> dict[str, Any] | None:
    """Fit one temperature on the best model's validation predictions, fold it into the head of the
    saved model (OUT/model) and draw the test split's reliability before and after; returns results.json's
    "calibration" block, or None with --calibrate false."""
    acc = p.accelerator
    if not cfg.calibrate:
        logger.info("Calibration: skipped (--calibrate false); the saved model gives raw softmax scores")
        return None
    best = load_model(out / "model")
    calibration.set_temperature(best, 1.0)  # a resumed run may find the saved head calibrated already
    model = acc.unwrap_model(p.model)
    model.load_state_dict(best.state_dict())
    # predict() gathers every process's logits: each process fits the same T on the same numbers.
    splits = {}
    for s in ("val", "test"):
        preds = predict(acc, p.model, p.eval_loaders[s], p.eval_tf)
        splits[s] = (preds.logits, preds.labels)
    temperature = calibration.fit_temperature(*splits["val"])
    summary = calibration.calibration_summary(temperature, splits)
    calibration.set_temperature(model, temperature)
    low = summary["low_confidence"]  # the app's "not sure" threshold, set on the calibrated val scores
    calibration.set_low_confidence(model, low["threshold"], low["rule"])
    if acc.is_main_process:
        save_model(model, out / "model")
        panels = calibration.reliability_panels(temperature, *splits["test"])
        figure = plots.plot_reliability(panels, out / "reliability.png")
        tracking.log_image(acc, "test/reliability", figure, step=state.global_step)
    acc.wait_for_everyone()  # the calibrated model is on disk before any process reads it back
    blocks = calibration.split_blocks(summary)  # "val_fit_set" (in-sample after T) and "test"
    values = {f"calibration/{key}/{k}": v for key, block in blocks.items() for k, v in block.items()}
    values["calibration/low_confidence_threshold"] = low["threshold"]
    tracking.log_metrics(acc, {"calibration/temperature": temperature, **values}, step=state.global_step)
    logger.info("%s", calibration.describe(summary))
    level = logging.WARNING if low["fallback"] else logging.INFO  # the default stands in for the rule
    logger.log(level, "%s", calibration.describe_threshold(summary))
    if calibration.at_bound(temperature):
        logger.warning(
            "Calibration: T = %.3f is at the edge of the search range; check the model", temperature
        )
    return summary


def fit_ood(cfg: TrainConfig, p: Parts, out: Path) -> dict[str, Any] | None:
    """Store the OOD score's data with the saved model: the train split's class means and covariance at
    the stride-16 stage, and the threshold that flags --ood-flag-rate of the validation photos; returns
    results.json's "ood" block, or None with --ood-flag-rate 0 (the model then stores no OOD data)."""
    if cfg.ood_flag_rate == 0:
        logger.info("OOD: skipped (--ood-flag-rate 0); the saved model stores no OOD data")
        return None
    acc = p.accelerator
    best = load_model(out / "model")  # the calibrated best weights, as saved
    acc.unwrap_model(p.model).load_state_dict(best.state_dict())
    splits = {s: ood_step.split_features(acc, p.model, p.eval_loaders[s], p.eval_tf) for s in p.eval_loaders}
    scorer, block = ood_step.fit(ood.ood_layer(best.timm_model), cfg.ood_flag_rate, splits)
    if acc.is_main_process:
        ood.attach(best, scorer)
        save_model(best, out / "model")  # the same weights, now with ood.safetensors and the ood_* keys
    acc.wait_for_everyone()
    logger.info(
        "OOD (%s on %s, %d-d): threshold %.3f flags %.1f%% of val, %.1f%% of test; %.0f KB stored",
        block["method"], block["layer"], block["width"], block["threshold"], 100 * block["val_flagged_share"],
        100 * block["test_flagged_share"], block["bytes"] / 1e3,
    )  # fmt: skip
    return block


# --- 7. Test ------------------------------------------------------------------------------------------


def evaluate_best_model(p: Parts, out: Path) -> dict[str, dict[str, Any]]:
    """Load the best epoch's weights and evaluate them on train, val and test (no augmentation)."""
    best = load_model(out / "model")
    p.accelerator.unwrap_model(p.model).load_state_dict(best.state_dict())
    return {
        s: predict(p.accelerator, p.model, loader, p.eval_tf).metrics(p.data.class_names)
        for s, loader in p.eval_loaders.items()
    }


# --- 8. Report ----------------------------------------------------------------------------------------


def report(
    cfg: TrainConfig,
    p: Parts,
    state: TrainerState,
    metrics: dict[str, dict[str, Any]],
    calibrated: dict[str, Any] | None,
    status: str,
    wall_time_s: float,
    ood_block: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write results.json and the plots; log the final numbers, the images and the model artifact."""
    acc, out = p.accelerator, Path(cfg.output_dir)
    overfitting: dict[str, Any] = {s: {k: m[k] for k in SUMMARY_KEYS} for s, m in metrics.items()}
    overfitting["gap_train_minus_val_accuracy"] = metrics["train"]["accuracy"] - metrics["val"]["accuracy"]
    overfitting["gap_val_minus_test_accuracy"] = metrics["val"]["accuracy"] - metrics["test"]["accuracy"]
    results = {
        "status": status,
        "config": asdict(cfg),
        # The Hub id the weights started from (a local folder's recorded id), for the model card.
        "base_model": card.base_model_of(cfg.model_name, cfg.pretrained),
        "data_report": p.data.report,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "history": state.history,
        "metrics": metrics,
        "overfitting": overfitting,
        "wall_time_s": wall_time_s,
        "train_images_per_s": state.train_images / max(state.train_seconds, 1e-9),
        "num_processes": acc.num_processes,
        "device": str(acc.device),
        "mixed_precision": precision_that_runs(acc),  # what ran, not what was asked for
    }
    if calibrated is not None:  # absent with --calibrate false: the scores are the raw softmax
        results["calibration"] = calibrated
    if ood_block is not None:  # absent with --ood-flag-rate 0: the model stores no OOD data
        results["ood"] = ood_block
    # The best model's numbers on every split: their own names, apart from the per-step train/* curves.
    final = {f"best_model/{s}/{k}": v for s in metrics for k, v in overfitting[s].items()}
    tracking.log_metrics(acc, final, step=state.global_step)
    if acc.is_main_process:
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        cm = plots.plot_confusion_matrix(
            metrics["test"]["confusion_matrix"], p.data.class_names, out / "confusion_matrix.png"
        )
        curves = plots.plot_curves(state.history, out / "curves.png")
        tracking.log_image(acc, "test/confusion_matrix", cm, step=state.global_step)
        tracking.log_image(acc, "curves", curves, step=state.global_step)
        # Named after the architecture that was trained (W&B artifact names allow [A-Za-z0-9._-]).
        artifact = f"trashnet-{acc.unwrap_model(p.model).config.architecture}".replace("_", "-")
        tracking.log_model_artifact(acc, out / "model", artifact, {"test": overfitting["test"]})
    return results
