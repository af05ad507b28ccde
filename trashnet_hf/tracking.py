"""Weights & Biases tracking through Accelerate's trackers; the only module that knows about wandb.

The training loop calls these functions unconditionally: each is a no-op when the accelerator has no
wandb tracker (``--report-to none``, or any process but the main one, where Accelerate starts no
trackers). A tracking failure never stops training: every call catches the error, logs a warning
naming what failed, and returns None.

wandb 0.31 reads its environment variables once, when it first sets itself up in a process, so
``configure_wandb`` must run before the first run starts; ``init_trackers`` also passes the mode and
folder explicitly, so a later ``configure_wandb`` still governs the runs it starts.
"""

from __future__ import annotations

import functools
import logging
import netrc
import os
import re
import secrets
import shlex
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import numpy as np

if TYPE_CHECKING:
    from accelerate import Accelerator
    from wandb.sdk.wandb_run import Run

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
# WANDB_MODE values wandb accepts, mapped to the three outcomes that matter here.
_MODES = {
    "online": "online",
    "run": "online",
    "shared": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}
_ID_CHARS = string.ascii_lowercase + string.digits
# wandb rejects artifact names with other characters.
_ARTIFACT_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")

P = ParamSpec("P")
R = TypeVar("R")


def _guarded(what: str) -> Callable[[Callable[P, R | None]], Callable[P, R | None]]:
    """Turn any exception of the wrapped call into a warning naming ``what`` failed, and return None."""

    def decorate(func: Callable[P, R | None]) -> Callable[P, R | None]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
            try:
                return func(*args, **kwargs)
            except Exception as err:  # tracking must never stop training
                logger.warning(
                    "W&B tracking: %s failed (%s: %s); training continues without it.",
                    what,
                    type(err).__name__,
                    err,
                )
                logger.debug("Traceback of the failed W&B call", exc_info=True)
                return None

        return wrapper

    return decorate


def _has_credentials() -> bool:
    """Whether wandb would find an API key: in the environment or from an earlier ``wandb login``."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    # `wandb login` stores the key in ~/.netrc (or $NETRC) under the server's host name.
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return False
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).netloc
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as err:
        logger.warning("W&B tracking: reading %s failed (%s); assuming no W&B login.", path, err)
        return False
    return bool(entry and entry[2])


_SET_HERE: dict[str, str] = {}  # the folder variables this module set, and to what


def _ours(name: str) -> bool:
    """Unset, or still holding what we set for an earlier run (so not the user's choice)."""
    return name not in os.environ or os.environ[name] == _SET_HERE.get(name)


def configure_wandb(output_dir: str | Path) -> str:
    """Prepare wandb's environment before the first run; return the mode: online, offline or disabled.

    With no W&B credentials (no WANDB_API_KEY, no ``wandb login``) and WANDB_MODE unset, switch to
    offline mode: the run is recorded under ``output_dir`` and can be uploaded later with ``wandb sync``,
    instead of failing at ``wandb.init``. WANDB_DIR defaults to ``output_dir`` (runs go to
    ``output_dir/wandb/``) and WANDB_DATA_DIR to ``output_dir/wandb/data``, so the run folders and the
    staged artifact files they refer to stay together. Variables the user set are left alone.
    """
    output_dir = Path(output_dir)
    if "WANDB_MODE" not in os.environ and not _has_credentials():
        os.environ["WANDB_MODE"] = "offline"
        logger.info(
            "W&B: no API key (WANDB_API_KEY or `wandb login`) found, so logging offline; "
            "upload the run later with `wandb sync`."
        )
    raw_mode = os.environ.get("WANDB_MODE", "online").strip().lower()
    mode = _MODES.get(raw_mode)
    if mode is None:
        logger.warning("W&B: unknown WANDB_MODE=%r; wandb will reject it at init.", raw_mode)
        mode = raw_mode
    # Folders set here follow each run's output_dir: kept from an earlier call, a second training in
    # the same process would write into the first one's folder.
    if _ours("WANDB_DIR"):
        output_dir.mkdir(parents=True, exist_ok=True)
        os.environ["WANDB_DIR"] = _SET_HERE["WANDB_DIR"] = str(output_dir.resolve())
    if _ours("WANDB_DATA_DIR"):
        # Staged copies of logged tables, images and model files (default ~/.local/share/wandb):
        # an offline run's `wandb sync` needs them, so keep them next to the run.
        data_dir = str(Path(os.environ["WANDB_DIR"], "wandb", "data").resolve())
        os.environ["WANDB_DATA_DIR"] = _SET_HERE["WANDB_DATA_DIR"] = data_dir
    if mode == "offline":
        # Offline runs never need the network; this also stops wandb-core's crash reports (Sentry and
        # OpenTelemetry), which would otherwise try to reach W&B servers on an error.
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    return mode


def _wandb_tracker(accelerator: Accelerator) -> Any | None:
    """The accelerator's started wandb tracker, or None (no wandb, not started, or not main process)."""
    for tracker in accelerator.trackers:
        if tracker.name == "wandb" and getattr(tracker, "run", None) is not None:
            return tracker
    return None


def _wandb_run(accelerator: Accelerator) -> Run | None:
    tracker = _wandb_tracker(accelerator)
    return None if tracker is None else tracker.run


def _uses_wandb(accelerator: Accelerator) -> bool:
    """Whether ``Accelerator(log_with=...)`` asked for wandb (LoggerType, string or tracker instance)."""
    from accelerate.tracking import GeneralTracker

    return any((t.name if isinstance(t, GeneralTracker) else str(t)) == "wandb" for t in accelerator.log_with)


def _new_run_id() -> str:
    # Same form as wandb's own ids (8 base-36 characters); wandb 0.31 no longer exports generate_id.
    return "".join(secrets.choice(_ID_CHARS) for _ in range(8))


def init_trackers(
    accelerator: Accelerator,
    project: str,
    config: dict[str, Any],
    run_name: str | None = None,
    run_id: str | None = None,
) -> str | None:
    """Start the accelerator's trackers; return the wandb run id, or None without a wandb run.

    Passing the id returned by an earlier call (e.g. stored in a checkpoint) continues that same W&B
    run. If starting fails, the trackers are dropped and training goes on untracked.
    """
    if not _uses_wandb(accelerator):
        _start_trackers(accelerator, project, config, {})
        return None
    existing = _wandb_run(accelerator)
    if existing is not None:
        logger.warning("W&B: run %s is already started; not starting another.", existing.id)
        return existing.id
    wandb_kwargs: dict[str, Any] = {
        "name": run_name,
        "id": run_id or _new_run_id(),
        "resume": "allow",
    }
    # Explicit, because wandb ignores WANDB_* changes made after its first setup in the process.
    if "WANDB_MODE" in os.environ:
        wandb_kwargs["mode"] = os.environ["WANDB_MODE"].strip().lower()
    if "WANDB_DIR" in os.environ:
        wandb_kwargs["dir"] = os.environ["WANDB_DIR"]
    if not _start_trackers(accelerator, project, config, {"wandb": wandb_kwargs}):
        _drop_trackers(accelerator)
        return None
    run = _wandb_run(accelerator)
    if run is None or run.settings.mode == "disabled":
        return None
    logger.info("W&B: run %s (%s) in %s", run.id, run.settings.mode, run.settings.sync_dir)
    return run.id


def _drop_trackers(accelerator: Accelerator) -> None:
    """Close any run that did start, then forget every tracker so later calls reach none.

    A half-started tracker (wandb.init raised) would fail on every later log call.
    """
    for tracker in accelerator.trackers:
        if getattr(tracker, "run", None) is not None:
            _finish_tracker(tracker)
    accelerator.trackers.clear()
    logger.warning("W&B: trackers dropped; training continues without experiment tracking.")


@_guarded("closing a half-started run")
def _finish_tracker(tracker: Any) -> None:
    tracker.finish()


@_guarded("starting the trackers")
def _start_trackers(
    accelerator: Accelerator, project: str, config: dict[str, Any], init_kwargs: dict[str, Any]
) -> bool:
    accelerator.init_trackers(project, config=config, init_kwargs=init_kwargs)
    return True


@_guarded("logging metrics")
def log_metrics(accelerator: Accelerator, values: dict[str, Any], step: int) -> None:
    """``accelerator.log`` that warns instead of raising when a tracker fails."""
    accelerator.log(values, step=step)


@_guarded("logging the prediction table")
def log_predictions(
    accelerator: Accelerator,
    images: np.ndarray,
    labels: Sequence[int],
    probs: np.ndarray,
    class_names: Sequence[str],
    step: int,
    key: str = "val/predictions",
) -> None:
    """Log a table of images with truth, prediction and one ``score_<class>`` column per class."""
    tracker = _wandb_tracker(accelerator)
    if tracker is None:
        return
    import wandb

    images = np.asarray(images)
    probs = np.asarray(probs, dtype=np.float64)
    labels = [int(label) for label in labels]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    if probs.shape != (len(images), len(class_names)):
        raise ValueError(
            f"probs must have shape (N, C) = ({len(images)}, {len(class_names)}), got {probs.shape}"
        )
    if len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    if any(not 0 <= label < len(class_names) for label in labels):
        raise ValueError(f"labels must be class ids in [0, {len(class_names)}), got {labels}")
    columns = ["image", "truth", "prediction", *(f"score_{name}" for name in class_names)]
    table = wandb.Table(columns=columns)
    for image, label, row in zip(images, labels, probs, strict=True):
        table.add_data(
            wandb.Image(image),
            class_names[label],
            class_names[int(row.argmax())],
            *(float(p) for p in row),
        )
    tracker.log({key: table}, step=step)


@_guarded("logging an image")
def log_image(accelerator: Accelerator, key: str, path: str | Path, step: int) -> None:
    """Log an image file (e.g. confusion_matrix.png, curves.png) under ``key``."""
    tracker = _wandb_tracker(accelerator)
    if tracker is None:
        return
    import wandb

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    tracker.log({key: wandb.Image(str(path))}, step=step)


@_guarded("logging the model artifact")
def log_model_artifact(
    accelerator: Accelerator, model_dir: str | Path, name: str, metadata: dict[str, Any]
) -> None:
    """Log the folder ``model_dir`` as a W&B artifact of type "model" (staged now, uploaded by sync)."""
    run = _wandb_run(accelerator)
    if run is None:
        return
    import wandb

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"no model folder at {model_dir}")
    safe_name = _ARTIFACT_NAME_BAD_CHARS.sub("-", name).strip("-.") or "model"
    if safe_name != name:
        logger.info("W&B: artifact name %r becomes %r (wandb allows only A-Z a-z 0-9 _ . -)", name, safe_name)
    artifact = wandb.Artifact(safe_name, type="model", metadata=metadata)
    artifact.add_dir(str(model_dir))
    run.log_artifact(artifact)


def _unsynced_segments(sync_dir: Path, run_id: str) -> list[Path]:
    """The offline folders of this run in ``sync_dir``'s parent not yet uploaded, oldest first.

    Each resumed offline session writes its own folder; ``wandb sync`` must get all of them.
    """
    segments = [
        folder
        for folder in sync_dir.parent.glob("offline-run-*")
        if (folder / f"run-{run_id}.wandb").is_file() and not (folder / f"run-{run_id}.wandb.synced").exists()
    ]
    if sync_dir not in segments:
        segments.append(sync_dir)
    return sorted(segments)


@_guarded("finishing the run")
def _end_training(accelerator: Accelerator) -> None:
    accelerator.end_training()


def finish(accelerator: Accelerator) -> str | None:
    """Finish every tracker (call instead of ``accelerator.end_training()``).

    For an offline run, return (and log) the ``wandb sync`` command that uploads it, covering every
    not-yet-synced offline session of the same run id; otherwise return None.
    """
    run = _wandb_run(accelerator)
    sync_command = None
    if run is not None:
        sync_command = _sync_command(run)
    _end_training(accelerator)
    # Finished trackers would fail on any later log call, and a later init_trackers would restart them.
    accelerator.trackers.clear()
    # The run's folders were set for this run only: child processes started later must not inherit them.
    for name, value in list(_SET_HERE.items()):
        if os.environ.get(name) == value:
            del os.environ[name]
        del _SET_HERE[name]
    if sync_command is not None:
        logger.info("W&B: offline run saved; upload it with: %s", sync_command)
    return sync_command


@_guarded("building the wandb sync command")
def _sync_command(run: Run) -> str | None:
    if not run.offline or run.settings.mode == "disabled":
        return None
    segments = _unsynced_segments(Path(run.settings.sync_dir), run.id)
    return shlex.join(["wandb", "sync", *(str(folder) for folder in segments)])
