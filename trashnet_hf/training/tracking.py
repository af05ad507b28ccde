"""Weights & Biases tracking through Accelerate's trackers; the only module that knows about wandb.

Every function is a no-op without a wandb run (``--report-to none``, or any process but the main one,
where Accelerate starts no trackers), and a tracking failure logs a warning instead of stopping training.
wandb itself (2 s to import) is imported only once a run exists.
"""

from __future__ import annotations

import functools
import logging
import netrc
import os
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import numpy as np
from accelerate.tracking import GeneralTracker

if TYPE_CHECKING:
    from accelerate import Accelerator
    from wandb.sdk.wandb_run import Run

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
_SET_HERE: dict[str, str] = {}  # the folder variables this module set, and to what


def _guarded(what: str) -> Callable[[Callable[P, R]], Callable[P, R | None]]:
    """Turn an exception of the wrapped call into one warning naming ``what`` failed; return None."""

    def decorate(func: Callable[P, R]) -> Callable[P, R | None]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
            try:
                return func(*args, **kwargs)
            except Exception as err:  # tracking must never stop training
                error = f"{type(err).__name__}: {err}"
                logger.warning("W&B tracking: %s failed (%s); training continues without it.", what, error)
                logger.debug("Traceback of the failed W&B call", exc_info=True)
                return None

        return wrapper

    return decorate


def _has_credentials() -> bool:
    """Whether wandb would find an API key: in the environment, or in the netrc entry of ``wandb login``."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    try:
        entry = netrc.netrc(str(path)).authenticators(host) if path.is_file() else None
    except (netrc.NetrcParseError, OSError) as err:
        logger.warning("W&B tracking: reading %s failed (%s); assuming no W&B login.", path, err)
        return False
    return bool(entry and entry[2])


def _set_unless_user_set(name: str, value: str) -> None:
    # A value left by an earlier training in this process is ours, not the user's: replace it.
    if name not in os.environ or os.environ[name] == _SET_HERE.get(name):
        os.environ[name] = _SET_HERE[name] = value


def configure_wandb(output_dir: str | Path) -> str:
    """Prepare wandb's environment before the first run; return WANDB_MODE (default "online").

    Without credentials and with WANDB_MODE unset, log offline (upload later with ``wandb sync``) rather
    than fail at ``wandb.init``. WANDB_DIR defaults to ``output_dir`` and WANDB_DATA_DIR (staged tables,
    images and model files, which ``wandb sync`` needs) to ``$WANDB_DIR/wandb/data``, next to the runs.
    """
    if "WANDB_MODE" not in os.environ and not _has_credentials():
        os.environ["WANDB_MODE"] = "offline"
        logger.info("W&B: no API key (WANDB_API_KEY or `wandb login`) found, so logging offline.")
    mode = os.environ.get("WANDB_MODE", "online")
    _set_unless_user_set("WANDB_DIR", str(Path(output_dir).resolve()))  # wandb.init creates it
    _set_unless_user_set("WANDB_DATA_DIR", str(Path(os.environ["WANDB_DIR"], "wandb", "data").resolve()))
    if mode == "offline":
        # Stops wandb-core's crash reports, which would try to reach W&B servers.
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    return mode


def _run(accelerator: Accelerator) -> Run | None:
    # Without trackers (none asked for, not the main process, finished) get_tracker gives a blank one.
    run = accelerator.get_tracker("wandb", unwrap=True)
    return None if isinstance(run, GeneralTracker) else run


@_guarded("starting the trackers")
def _start_trackers(accelerator: Accelerator, project: str, config: dict, init_kwargs: dict) -> bool:
    accelerator.init_trackers(project, config=config, init_kwargs=init_kwargs)
    return True


def init_trackers(
    accelerator: Accelerator,
    project: str,
    config: dict[str, Any],
    run_name: str | None = None,
    run_id: str | None = None,
) -> str | None:
    """Start the accelerator's trackers; return the wandb run id, or None without a wandb run.

    ``run_id`` (returned by an earlier call, stored in a checkpoint) continues that run. If starting
    fails, the trackers are dropped and training goes on untracked.
    """
    # mode and dir are explicit because wandb reads WANDB_* only once per process.
    kwargs = {"name": run_name, "mode": os.environ.get("WANDB_MODE"), "dir": os.environ.get("WANDB_DIR")}
    if run_id:
        kwargs |= {"id": run_id, "resume": "allow"}
    if not _start_trackers(accelerator, project, config, {"wandb": kwargs}):
        # Close a run that did start; a half-started tracker would fail on every later call.
        for tracker in accelerator.trackers:
            if getattr(tracker, "run", None) is not None:
                _guarded("closing a half-started run")(tracker.finish)()
        accelerator.trackers.clear()
        logger.warning("W&B: trackers dropped; training continues without experiment tracking.")
        return None
    run = _run(accelerator)
    if run is None or run.disabled:
        return None
    logger.info("W&B: run %s (%s) in %s", run.id, run.settings.mode, run.settings.sync_dir)
    return run.id


@_guarded("logging metrics")
def log_metrics(accelerator: Accelerator, values: dict[str, Any], step: int) -> None:
    """``accelerator.log`` that warns instead of raising when a tracker fails."""
    accelerator.log(values, step=step)


@_guarded("logging the prediction table")
def log_predictions(
    accelerator: Accelerator,
    images: Sequence[np.ndarray],
    labels: Sequence[int],
    probs: np.ndarray,
    class_names: Sequence[str],
    step: int,
    key: str = "val/predictions",
) -> None:
    """Log a table of (H, W, 3) uint8 images with truth, prediction and a ``score_<class>`` per class."""
    if (run := _run(accelerator)) is None:
        return
    import wandb

    table = wandb.Table(columns=["image", "truth", "prediction", *(f"score_{c}" for c in class_names)])
    for image, label, row in zip(images, labels, np.asarray(probs), strict=True):
        truth, prediction = class_names[label], class_names[int(row.argmax())]
        table.add_data(wandb.Image(image), truth, prediction, *map(float, row))
    run.log({key: table}, step=step)


@_guarded("logging an image")
def log_image(accelerator: Accelerator, key: str, path: str | Path, step: int) -> None:
    """Log an image file (e.g. confusion_matrix.png) under ``key``."""
    if (run := _run(accelerator)) is not None:
        import wandb

        run.log({key: wandb.Image(str(path))}, step=step)


@_guarded("logging the model artifact")
def log_model_artifact(
    accelerator: Accelerator, model_dir: str | Path, name: str, metadata: dict[str, Any]
) -> None:
    """Log the folder ``model_dir`` as a W&B "model" artifact (staged now; uploaded now or by sync)."""
    if (run := _run(accelerator)) is None:
        return
    import wandb

    # wandb rejects artifact names with other characters.
    artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]+", "-", name), type="model", metadata=metadata)
    artifact.add_dir(str(model_dir))
    run.log_artifact(artifact)


@_guarded("building the wandb sync command")
def _sync_command(run: Run) -> str:
    # Each resumed offline session writes its own offline-run-* folder with the same id: sync them all.
    sync_dir = Path(run.settings.sync_dir)
    log = f"run-{run.id}.wandb"
    unsynced = {
        d
        for d in sync_dir.parent.glob("offline-run-*")
        if (d / log).is_file() and not (d / f"{log}.synced").exists()
    }
    return shlex.join(["wandb", "sync", *map(str, sorted(unsynced | {sync_dir}))])


def finish(accelerator: Accelerator) -> str | None:
    """Finish the trackers (instead of ``accelerator.end_training()``).

    For an offline run, return (and log) the ``wandb sync`` command that uploads every not-yet-synced
    offline session of its run id; otherwise return None.
    """
    run = _run(accelerator)
    command = _sync_command(run) if run is not None and run.offline else None
    _guarded("finishing the run")(accelerator.end_training)()
    # Finished trackers would fail on any later call, and a later init_trackers would restart them.
    accelerator.trackers.clear()
    # The folders were set for this run only: a later training or child process must not inherit them.
    for name, value in _SET_HERE.items():
        if os.environ.get(name) == value:
            del os.environ[name]
    _SET_HERE.clear()
    if command:
        logger.info("W&B: offline run saved; upload it with: %s", command)
    return command
