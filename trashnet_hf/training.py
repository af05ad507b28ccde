"""The main job, top to bottom: setup, data, model, optimisation, train and validate, test, report.

Runs the same under ``python train.py`` and ``accelerate launch train.py`` (any number of processes,
CPU or GPU). W&B is reached only through Accelerate's trackers (``trashnet_hf.tracking``), so the loop
has no tracking branches. Per-step values stay on the device and are read once every
``--logging-steps``, so the GPU never waits on the host in between.
"""

from __future__ import annotations

import ctypes
import json
import math
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from trashnet_hf import hub, plots, tracking
from trashnet_hf.config import TrainConfig
from trashnet_hf.data import DataError, prepare_data, write_outputs
from trashnet_hf.data.loader import decode_pixels, make_loader
from trashnet_hf.data.transforms import EvalTransform, TrainTransform
from trashnet_hf.evaluation import predict
from trashnet_hf.model import PRETRAINED_HINT, build_model, load_model, save_model

logger = get_logger(__name__)  # logs from the main process only

STATE_FILE = "trainer_state.json"
CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2  # each holds weights + AdamW moments (~135 MB for ResNet-18)


@dataclass
class TrainerState:
    """Where training stands: saved beside every checkpoint, so a resume continues exactly."""

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


@dataclass
class TrainResult:
    status: str  # "completed", "early_stopped" or "interrupted"
    output_dir: Path
    results: dict[str, Any] | None


class _StopRequest:
    """SIGTERM / Ctrl-C set a flag; the loop saves a checkpoint at the next safe point and exits."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
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


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No decay on biases and norm weights (the 1-D parameters): decaying them only hurts.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in (out / CHECKPOINTS).glob("step_*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: json.loads((p / STATE_FILE).read_text())["global_step"])


def _resolve_checkpoint(cfg: TrainConfig) -> Path | None:
    if cfg.resume_from_checkpoint is None:
        return None
    if cfg.resume_from_checkpoint == "latest":
        found = _checkpoints(Path(cfg.output_dir))
        if not found:
            raise FileNotFoundError(
                f"--resume-from-checkpoint latest: no checkpoint in {Path(cfg.output_dir) / CHECKPOINTS}"
            )
        return found[-1]
    path = Path(cfg.resume_from_checkpoint)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume-from-checkpoint: {path} has no {STATE_FILE}; not a checkpoint")
    return path


def _save_checkpoint(accelerator: Accelerator, out: Path, state: TrainerState) -> Path:
    path = out / CHECKPOINTS / f"step_{state.global_step:07d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        for old in _checkpoints(out)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return path


def _split_summary(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: metrics[k] for k in ("loss", "accuracy", "macro_f1", "weighted_f1")}


def train(cfg: TrainConfig) -> TrainResult:
    """Fine-tune, validate every epoch, keep the best model by validation macro-F1, test it, report."""
    out = Path(cfg.output_dir)
    started = time.perf_counter()

    # --- 1. Setup -------------------------------------------------------------------------------
    if cfg.report_to == "wandb":
        tracking.configure_wandb(out)
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=str(out),
        # The shuffle order is a function of (seed, epoch): a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(cfg.seed)
    device = accelerator.device
    if device.type == "cpu":
        tune_cpu_allocator()
    resume_from = _resolve_checkpoint(cfg)
    if cfg.pretrained:
        # Fetch (or find cached) weights before any data work: offline, this fails in seconds.
        with accelerator.main_process_first():
            hub.download_model(cfg.model_name, cfg.cache_dir, hint=PRETRAINED_HINT)

    # --- 2. Data ----------------------------------------------------------------------------------
    with accelerator.main_process_first():
        data = prepare_data(cfg)
    if accelerator.is_main_process:
        write_outputs(out, data.report, data.manifest)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    r = data.report
    logger.info(
        "Data: %d images, %d bad, %d duplicate groups, %d label conflicts dropped; train/val/test = %s",
        r["num_images"],
        r["num_bad"],
        r["duplicate_groups"],
        len(r["label_conflicts"]),
        "/".join(str(sum(r["splits"][s].values())) for s in ("train", "val", "test")),
    )
    workers = cfg.num_workers if cfg.num_workers is not None else (2 if device.type == "cuda" else 0)
    pin = device.type == "cuda"
    n_train = len(data.splits["train"])
    if n_train < cfg.batch_size * accelerator.num_processes:
        raise DataError(
            f"the train split has {n_train} images, fewer than one batch (--batch-size {cfg.batch_size} x "
            f"{accelerator.num_processes} processes); lower --batch-size or add images."
        )
    # drop_last: a last batch of one image breaks BatchNorm, and ragged batches skew the loss.
    train_loader = make_loader(
        data.splits["train"],
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_workers=workers,
        pin_memory=pin,
        drop_last=True,
    )
    eval_loaders = {
        split: make_loader(
            data.splits[split], cfg.eval_batch_size, False, num_workers=workers, pin_memory=pin
        )
        for split in ("train", "val", "test")
    }

    # --- 3. Model ---------------------------------------------------------------------------------
    model = build_model(
        cfg.model_name, data.class_names, data.preprocessing, cfg.pretrained, cfg.cache_dir, cfg.seed
    )
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_tf = TrainTransform(
        data.preprocessing, scale=(cfg.crop_scale_min, 1.0), jitter=cfg.color_jitter
    ).to(device)
    eval_tf = EvalTransform(data.preprocessing).to(device)

    # --- 4. Optimisation --------------------------------------------------------------------------
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.learning_rate)
    # Counted on the unsharded loader: Accelerate steps the scheduler once per process per update.
    steps_per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, train_loader, scheduler, *prepared = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *eval_loaders.values()
    )
    eval_loaders = dict(zip(eval_loaders, prepared, strict=True))

    state = TrainerState()
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = TrainerState(**json.loads((resume_from / STATE_FILE).read_text()))
        logger.info("Resumed from %s (epoch %d, step %d)", resume_from, state.epoch + 1, state.global_step)

    state.wandb_run_id = tracking.init_trackers(
        accelerator, cfg.wandb_project, asdict(cfg), cfg.run_name, state.wandb_run_id
    )

    # --- 5. Train and validate --------------------------------------------------------------------
    table_rows = list(range(min(cfg.prediction_table_size, len(data.splits["val"]))))
    table_images = [decode_pixels(data.splits["val"][i]["pixels"]) for i in table_rows]
    status = "completed"
    bar = tqdm(
        total=total_steps,
        initial=state.global_step,
        disable=not accelerator.is_local_main_process,
        unit="step",
    )
    with _StopRequest() as stop:
        while state.epoch < cfg.epochs and status == "completed":
            model.train()
            train_loader.set_epoch(state.epoch)
            loader = accelerator.skip_first_batches(train_loader, state.step_in_epoch)
            window = torch.zeros(3, device=device)  # loss sum, correct, seen since the last log
            # This epoch's running totals, carried over from the checkpoint when resuming mid-epoch
            # (spread over the processes, which sum them back at the end).
            carried = torch.tensor(state.epoch_totals, device=device) / accelerator.num_processes
            epoch_totals = torch.zeros(3, device=device) + carried
            window_start, window_images = time.perf_counter(), 0
            for batch in loader:
                with accelerator.accumulate(model):
                    logits = model(pixel_values=train_tf(batch["pixels"])).logits.float()
                    loss = F.cross_entropy(logits, batch["label"], label_smoothing=cfg.label_smoothing)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                n = batch["label"].shape[0]
                # One small stack per step, on the device (new_full: no host-to-device copy).
                batch_stats = torch.stack(
                    [
                        loss.detach() * n,
                        (logits.argmax(-1) == batch["label"]).sum().float(),
                        loss.new_full((), n),
                    ]
                )
                window += batch_stats
                epoch_totals += batch_stats
                window_images += n
                state.step_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                state.global_step += 1
                bar.update(1)
                if state.global_step % cfg.logging_steps == 0:
                    # The one host sync of a logging window: loss, accuracy and the stop flag together.
                    flag = torch.tensor(float(stop.requested), device=device)
                    totals = accelerator.reduce(torch.cat([window, flag.view(1)]), "sum")
                    loss_v, correct_v, seen_v, flag_v = totals.tolist()
                    elapsed = time.perf_counter() - window_start
                    images_per_s = window_images * accelerator.num_processes / max(elapsed, 1e-9)
                    state.train_seconds += elapsed
                    state.train_images += window_images * accelerator.num_processes
                    tracking.log_metrics(
                        accelerator,
                        {
                            "train/loss": loss_v / seen_v,
                            "train/accuracy": correct_v / seen_v,
                            "train/lr": scheduler.get_last_lr()[0],
                            "train/images_per_s": images_per_s,
                            "epoch": state.epoch + state.step_in_epoch / len(train_loader),
                        },
                        step=state.global_step,
                    )
                    bar.set_postfix(loss=f"{loss_v / seen_v:.3f}", img_s=f"{images_per_s:.0f}")
                    window.zero_()
                    window_start, window_images = time.perf_counter(), 0
                    if flag_v > 0:
                        status = "interrupted"
                        break
                if cfg.checkpoint_every_steps and state.global_step % cfg.checkpoint_every_steps == 0:
                    state.epoch_totals = accelerator.reduce(epoch_totals.clone(), "sum").tolist()
                    _save_checkpoint(accelerator, out, state)
            if status == "interrupted":
                state.epoch_totals = accelerator.reduce(epoch_totals.clone(), "sum").tolist()
                break
            state.train_seconds += time.perf_counter() - window_start
            state.train_images += window_images * accelerator.num_processes

            # Validation, once per epoch.
            train_loss, train_correct, train_seen = accelerator.reduce(epoch_totals, "sum").tolist()
            state.epoch_totals = [0.0, 0.0, 0.0]
            val = predict(accelerator, model, eval_loaders["val"], eval_tf)
            val_metrics = val.metrics(data.class_names)
            record = {
                "epoch": state.epoch + 1,
                "train_loss": train_loss / max(train_seen, 1),
                "train_accuracy": train_correct / max(train_seen, 1),
                "val_loss": val_metrics["loss"],
                "val_accuracy": val_metrics["accuracy"],
                "val_macro_f1": val_metrics["macro_f1"],
            }
            state.history.append(record)
            improved = val_metrics["macro_f1"] > state.best_macro_f1
            if improved:
                state.best_macro_f1, state.best_epoch = val_metrics["macro_f1"], state.epoch + 1
                state.epochs_without_improvement = 0
                if accelerator.is_main_process:
                    save_model(accelerator.unwrap_model(model), out / "model")
            else:
                state.epochs_without_improvement += 1
            tracking.log_metrics(
                accelerator,
                {f"val/{k}": v for k, v in record.items() if k.startswith("val_")},
                step=state.global_step,
            )
            tracking.log_predictions(
                accelerator,
                table_images,
                val.labels[table_rows],
                val.probs[table_rows],
                data.class_names,
                step=state.global_step,
            )
            logger.info(
                "epoch %2d/%d  train loss %.4f acc %.3f | val loss %.4f acc %.3f macro-F1 %.3f%s",
                state.epoch + 1,
                cfg.epochs,
                record["train_loss"],
                record["train_accuracy"],
                record["val_loss"],
                record["val_accuracy"],
                record["val_macro_f1"],
                "  (best)" if improved else "",
            )
            state.epoch += 1
            state.step_in_epoch = 0
            if cfg.patience and state.epochs_without_improvement >= cfg.patience and state.epoch < cfg.epochs:
                logger.info("Early stopping: no better validation macro-F1 for %d epochs", cfg.patience)
                status = "early_stopped"
            # Checked with every process: a signal seen by one process must stop all of them.
            flag = accelerator.reduce(torch.tensor(float(stop.requested), device=device), "sum")
            _save_checkpoint(accelerator, out, state)
            if flag.item() > 0:
                status = "interrupted"
    bar.close()

    if status == "interrupted":
        # Stopped mid-epoch: the epoch-end checkpoint was not written, so write one here.
        path = _save_checkpoint(accelerator, out, state) if state.step_in_epoch else _checkpoints(out)[-1]
        logger.warning(
            "Stopped at step %d. Resume with: --resume-from-checkpoint %s", state.global_step, path
        )
        tracking.finish(accelerator)
        return TrainResult(status, out, None)

    # --- 6. Test the best model, measure overfitting --------------------------------------------
    best = load_model(out / "model")
    accelerator.unwrap_model(model).load_state_dict(best.state_dict())
    splits = {s: predict(accelerator, model, loader, eval_tf) for s, loader in eval_loaders.items()}
    metrics = {s: p.metrics(data.class_names) for s, p in splits.items()}
    overfitting = {s: _split_summary(m) for s, m in metrics.items()}
    overfitting["gap_train_minus_val_accuracy"] = metrics["train"]["accuracy"] - metrics["val"]["accuracy"]
    overfitting["gap_val_minus_test_accuracy"] = metrics["val"]["accuracy"] - metrics["test"]["accuracy"]

    # --- 7. Report --------------------------------------------------------------------------------
    results = {
        "status": status,
        "config": asdict(cfg),
        "data_report": data.report,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "history": state.history,
        "metrics": metrics,
        "overfitting": overfitting,
        "wall_time_s": time.perf_counter() - started,
        "train_images_per_s": state.train_images / max(state.train_seconds, 1e-9),
        "num_processes": accelerator.num_processes,
        "device": str(device),
        "mixed_precision": accelerator.mixed_precision,
    }
    if accelerator.is_main_process:
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        cm_png = plots.plot_confusion_matrix(
            metrics["test"]["confusion_matrix"], data.class_names, out / "confusion_matrix.png"
        )
        curves_png = plots.plot_curves(state.history, out / "curves.png")
    tracking.log_metrics(
        accelerator,
        {f"{s}/{k}": v for s, m in overfitting.items() if isinstance(m, dict) for k, v in m.items()},
        step=state.global_step,
    )
    if accelerator.is_main_process:
        tracking.log_image(accelerator, "test/confusion_matrix", cm_png, step=state.global_step)
        tracking.log_image(accelerator, "curves", curves_png, step=state.global_step)
        tracking.log_model_artifact(
            accelerator, out / "model", "trashnet-resnet18", {"test": _split_summary(metrics["test"])}
        )
    sync_command = tracking.finish(accelerator)
    results["wandb_sync"] = sync_command
    return TrainResult(status, out, results)
