"""Publish a training run to the Hugging Face Hub: the model repo (weights, ONNX export, card, plots,
results), the Gradio Space (the demo, self-contained) and the static Space (the demo in the browser).

    trashnet-hf publish OUT --model-repo USER/NAME --space-repo USER/NAME-demo --dry-run
    trashnet-hf publish OUT --model-repo USER/NAME --space-repo USER/NAME-demo
    trashnet-hf publish build --space-only --model-repo USER/NAME --space-repo USER/NAME-demo

    trashnet-hf publish OUT --model-repo USER/NAME --static-space-repo USER/NAME-web --dry-run

The folders are built under OUT/publish/ (model/, space/ and static/, the static Space of
``trashnet_hf.hub.static``) first, then each is uploaded in one
commit after ``create_repo(exist_ok=True)``. --dry-run stops after the build: the offline twin of a push.
The build happens in a hidden sibling folder and replaces OUT/publish only once it is complete, so a
failure leaves the previous build as it was; a previous build is replaced only if nobody added or edited
a file in it. No published file holds a local path or a secret (``redact``: paths become relative to
the run's folders, and every file is checked as bytes before the swap).
The token comes from HF_TOKEN or the saved login (``hf auth login``); this code checks that one exists
and, to keep it out of the files, compares them against it; it never logs or writes it. With hub.py,
the only module that talks to the Hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx2
from huggingface_hub import HfApi, SpaceCard, SpaceCardData, get_token
from huggingface_hub.errors import HfHubHTTPError
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

import trashnet_hf
from trashnet_hf.core import cli
from trashnet_hf.core.errors import ConfigError, UserError
from trashnet_hf.hub import client as hub
from trashnet_hf.hub.card import read_run, render_card
from trashnet_hf.hub.redact import Redactor
from trashnet_hf.hub.static import ORT_WEB_VERSION, build_static_folder, write_examples

if TYPE_CHECKING:  # config.py imports timm (torch); the Space workflow builds without them
    from trashnet_hf.core.config import TrainConfig

logger = logging.getLogger(__name__)

PACKAGE = Path(trashnet_hf.__file__).resolve().parent
PROJECT = PACKAGE.parent  # a checkout: app.py and requirements.txt sit beside the package
# Marks OUT/publish as this module's build, with the SHA-256 of every file it wrote: a rebuild replaces
# the folder only when nothing in it was added or edited since (see check_previous_build).
MARKER = ".trashnet-hf-build.json"
BUILT_BY = "trashnet_hf.publish"  # the marker value predates the hub wing; kept so earlier builds rebuild
MODEL_FILES = ("config.json", "model.safetensors")
ONNX_FILE = "model.onnx"  # the exported model in the model repo: the Spaces run it, without torch
RUN_FILES = ("results.json", "confusion_matrix.png", "curves.png", "reliability.png")
# What the Space installs: the app's runtime imports, pinned to requirements.txt (tests/test_publish.py
# checks them against what app.py loads). The Space serves the model repo's model.onnx (model_id.txt is
# USER/NAME/model.onnx) with onnxruntime, preprocessing in NumPy and PIL (Preprocessing.to_array): no torch,
# torchvision, transformers or timm (bench/space_install.py measures the difference). Serving decodes with
# trashnet_hf.core.decoding, so the data stack (datasets, imagehash, scikit-learn) stays out too. Not
# gradio: a Gradio Space installs the version its README's sdk_version names.
SPACE_WINGS = ("core", "serving", "hub")  # what app.py imports; tests/test_layers.py checks it
SPACE_PACKAGES = ("onnxruntime", "numpy", "pillow", "huggingface_hub", "httpx2")
SUBSCRIPTION_NOTE = (
    "A Gradio Space on the free cpu-basic hardware needs a PRO (user) or Team/Enterprise (organisation) "
    "subscription on the Hub (paid hardware needs billing instead); the model repo and "
    "pipeline('image-classification', model=...) need none."
)
NO_TOKEN = (
    "no Hugging Face token: run `hf auth login` (or set HF_TOKEN to a token with write access), "
    "or build the folders offline with `trashnet-hf publish OUT --model-repo USER/NAME --dry-run` "
    "and push later."
)
# pip's comment rule: "#" at the start of a line or after whitespace (a URL may hold "#egg=").
COMMENT = re.compile(r"(^|\s+)#.*$")
UPLOAD_TRIES = 3
BACKOFF_S = 2.0  # then 4 s: a few tries ride out a Hub hiccup, not an outage

T = TypeVar("T")


@dataclass
class PublishArgs:
    """``trashnet-hf publish``: build the model repo and Space folders, then upload them."""

    output_dir: str = field(
        metadata={
            "positional": True,
            "help": "Training output folder (train.py's --output-dir): model/ and results.json are read from "
            "it, and the folders to upload are built in OUT/publish/. With --space-only any folder.",
        }
    )
    model_repo: str = field(
        metadata={"help": "Hub model repo to create or update, USER/NAME (or ORG/NAME); the Space loads it."}
    )
    space_repo: str | None = field(
        default=None,
        metadata={"help": "Hub Space to create or update with the Gradio demo, USER/NAME; default: none."},
    )
    static_space_repo: str | None = field(
        default=None,
        metadata={
            "help": "Hub Space to create or update with the static demo (free hosting: the model runs in the "
            "visitor's browser with onnxruntime-web), USER/NAME; default: none."
        },
    )
    ort_web_tarball: str | None = field(
        default=None,
        metadata={
            "help": f"The onnxruntime-web {ORT_WEB_VERSION} npm tarball for the static Space, for a machine "
            "that cannot reach the npm registry (`npm pack onnxruntime-web@VERSION`); default: downloaded "
            "once into ~/.cache/trashnet-hf/npm. Its checksums are verified either way."
        },
    )
    private: bool = field(
        default=False, metadata={"help": "Create the repos private (an existing repo keeps its visibility)."}
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Build the folders and list their files, then stop: no token, no network."},
    )
    compare_with: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Other training output folders whose test figures the card shows beside this run's, "
            "e.g. the random-init runs of bench/accuracy.py --compare. Each must have been tested on the "
            "very same photos (the same split fingerprint: train.py --split-manifest), or it is refused."
        },
    )
    space_only: bool = field(
        default=False,
        metadata={
            "help": "Build (and push) only the Space, for an already published --model-repo, from this "
            "checkout: no training output needed (the Space deployment workflow uses it)."
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ConfigError naming the flag for anything that cannot work, before any work."""
        hub.check_repo_id("--model-repo", self.model_repo)
        if self.space_repo is not None:
            hub.check_repo_id("--space-repo", self.space_repo)
        if self.static_space_repo is not None:
            hub.check_repo_id("--static-space-repo", self.static_space_repo)
        if self.ort_web_tarball is not None and not Path(self.ort_web_tarball).is_file():
            raise ConfigError(f"--ort-web-tarball {self.ort_web_tarball}: no such file.")
        out = Path(self.output_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"OUT: {out} is a file; pass train.py's output folder.")
        if self.space_only:
            if self.space_repo is None and self.static_space_repo is None:
                raise ConfigError(
                    "--space-only builds the Spaces: pass --space-repo USER/NAME and/or --static-space-repo."
                )
            return
        for other in self.compare_with:
            if not (Path(other) / "results.json").is_file():
                raise ConfigError(
                    f"--compare-with {other}: no results.json there; pass a train.py output folder."
                )
        missing = [
            f for f in ("results.json", *(f"model/{m}" for m in MODEL_FILES)) if not (out / f).is_file()
        ]
        if missing:
            raise ConfigError(
                f"OUT: {out} lacks {', '.join(missing)}; pass a folder written by train.py (its "
                "--output-dir), or --space-only to build just the Space."
            )


@dataclass
class Built:
    """The folders a build made (None: not asked for)."""

    model: Path | None
    space: Path | None
    static: Path | None = None


# --- Build ------------------------------------------------------------------------------------------


def _entries(folder: Path) -> dict[str, Path]:
    """Every file (and symlink) under ``folder`` by relative path, without following links."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [*filenames, *(d for d in dirnames if Path(dirpath, d).is_symlink())]:
            path = Path(dirpath, name)
            found[path.relative_to(folder).as_posix()] = path
    return found


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative path, without the marker."""
    return {rel: _sha256(path) for rel, path in sorted(_entries(folder).items()) if rel != MARKER}


def _recorded(marker: Path) -> dict[str, str]:
    """The files (relative path: SHA-256) the build that wrote ``marker`` made; UserError if damaged."""
    try:
        saved = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = f"unreadable: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    else:
        files = saved.get("files") if isinstance(saved, dict) else None
        if (
            isinstance(saved, dict)
            and saved.get("built_by") == BUILT_BY
            and isinstance(files, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
        ):
            return files
        problem = f"not a record of files by {BUILT_BY} (it needs 'built_by' and 'files')"
    raise UserError(
        f"{marker}: damaged build marker ({problem}); without it the files a build wrote cannot be told from "
        f"yours, so nothing in {marker.parent} is replaced: move anything you want to keep out of it, "
        "delete the folder, then run again."
    )


def _derived(rel: str, recorded: dict[str, str]) -> bool:
    """Whether ``rel`` is byte code Python compiled from a module the build wrote
    (``dir/__pycache__/app.cpython-311.pyc`` for ``dir/app.py``): regenerated, and stale after a rebuild."""
    parts = rel.split("/")
    if len(parts) < 2 or parts[-2] != "__pycache__" or not parts[-1].endswith(".pyc"):
        return False
    return "/".join([*parts[:-2], parts[-1].split(".")[0] + ".py"]) in recorded


def check_previous_build(publish: Path) -> None:
    """UserError unless ``publish`` is absent or this module's previous build, unchanged: it holds a valid
    marker, every file in it is one the marker records (or byte code compiled from one) with the digest it
    recorded. Anything else, a user's file under __pycache__/ included, is refused, naming it."""
    if not publish.exists():
        return
    marker = publish / MARKER
    if not publish.is_dir() or not marker.is_file():
        raise UserError(
            f"{publish} exists but was not built by {BUILT_BY} (no {MARKER}); move it away or delete it, "
            "then run again."
        )
    recorded = _recorded(marker)
    changed = [
        rel
        for rel, path in sorted(_entries(publish).items())
        if rel != MARKER
        and not _derived(rel, recorded)
        and (rel not in recorded or path.is_symlink() or _sha256(path) != recorded[rel])
    ]
    if changed:
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        raise UserError(
            f"{publish}: {len(changed)} file(s) added or edited since the last build ({shown}); nothing is "
            "overwritten: move them (or the folder) away, then run again."
        )


def _swap_in(staging: Path, publish: Path) -> None:
    """Replace ``publish`` by the complete build in ``staging``: the old folder is renamed away, the new
    one renamed in, then the old one removed; a failure leaves the previous build where it was."""
    old = None
    if publish.exists():
        check_previous_build(publish)  # again: nothing added while this build ran is lost
        old = publish.with_name(f".publish-old-{uuid.uuid4().hex[:12]}")
        publish.rename(old)
        logger.info("Replacing the previous build in %s (unchanged since it was built)", publish)
    try:
        staging.rename(publish)
    except OSError as err:
        if old is not None:
            old.rename(publish)
        raise UserError(
            f"Cannot move the new build into {publish} ({err}); the previous one is kept."
        ) from None
    if old is not None:
        shutil.rmtree(old)


def build_model_folder(
    out: Path, dest: Path, model_id: str, redactor: Redactor, compare_with: Sequence[str] = ()
) -> Path:
    """The model repo: weights, config, the card as README.md, the plots and results.json, with local
    paths made relative (``redact``)."""
    dest.mkdir(parents=True)
    shutil.copy2(out / "model" / "model.safetensors", dest / "model.safetensors")
    redactor.write_json(out / "model" / "config.json", dest / "config.json", "model/config.json")
    redactor.write_json(out / "results.json", dest / "results.json", "model/results.json")
    for name in RUN_FILES:
        if name != "results.json" and (out / name).is_file():
            shutil.copy2(out / name, dest / name)
    card = render_card(out, model_id, compare_with)
    redactor.write_text(dest / "README.md", str(card), "model/README.md (the card)")
    export_onnx(out / "model", dest / ONNX_FILE)
    return dest


def export_onnx(model_dir: Path, dest: Path) -> Path:
    """``model.onnx`` for the model repo and the Spaces: ``trashnet-hf export``'s file (labels and
    preprocessing in its metadata), written only once onnxruntime matches PyTorch on the run's test photos."""
    from trashnet_hf.serving import onnx  # torch: only a build from a training run gets here

    onnx.run(onnx.ExportArgs(model_dir=str(model_dir), output=str(dest)))
    return dest


def _pins(names: tuple[str, ...]) -> dict[str, str]:
    """The exact versions requirements.txt pins (``name==version``) for ``names``, read by ``packaging``."""
    requirements = PROJECT / "requirements.txt"
    if not requirements.is_file():
        raise UserError(f"{requirements} not found: build the Space from a checkout of the project.")
    pins = {}
    for number, line in enumerate(requirements.read_text().splitlines(), 1):
        spec = COMMENT.sub("", line).strip()
        if not spec or spec.startswith("-"):  # a comment, or a pip option (-r, --index-url, -e)
            continue
        try:
            requirement = Requirement(spec)
        except InvalidRequirement as err:
            raise UserError(f"{requirements}:{number}: not a requirement ({err}).") from None
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if len(exact) == 1:
            pins[canonicalize_name(requirement.name)] = exact[0]
    missing = [n for n in names if canonicalize_name(n) not in pins]
    if missing:
        raise UserError(f"{requirements} pins no version of {', '.join(missing)}; the Space needs one.")
    return {n: pins[canonicalize_name(n)] for n in names}


def _space_readme(model_id: str, space_id: str) -> str:
    data = SpaceCardData(
        title=space_id.split("/")[1],
        sdk="gradio",
        sdk_version=_pins(("gradio",))["gradio"],  # the version the project tests the app with
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        app_file="app.py",
        license="mit",
        models=[model_id],
        emoji="♻️",
        colorFrom="green",
        colorTo="gray",
        pinned=False,
        short_description="Sort a photo of waste: cardboard, glass, metal, paper, plastic, trash",
    )
    body = (
        f"# {space_id.split('/')[1]}\n\nUpload a photo of one item of waste; the model "
        f"[{model_id}](https://huggingface.co/{model_id}) sorts it into cardboard, glass, metal, paper, "
        "plastic or trash. It learnt from TrashNet's studio photos (one object on a white board), so expect "
        "it to do worse on photos of real bins.\n\nBuilt by `trashnet-hf publish` of the "
        "trashnet-hf project: `app.py`, the `trashnet_hf` package it imports, `requirements.txt`, "
        "`examples/` (TrashNet photos, MIT, see examples/CREDITS.md) and `model_id.txt` (the model the "
        f"app loads: the repo's `{ONNX_FILE}`, run with ONNX Runtime; the Space installs no PyTorch)."
        "\n\n"
        f"Note: {SUBSCRIPTION_NOTE}\n"
    )
    return str(SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def build_space_folder(dest: Path, model_id: str, space_id: str, redactor: Redactor) -> Path:
    """The Space: app.py, the package it imports, its requirements, README front matter, examples and
    the model to serve (``USER/NAME/model.onnx``), so it runs from that folder alone, without torch."""
    app = PROJECT / "app.py"
    if not app.is_file():
        raise UserError(f"{app} not found: build the Space from a checkout of the project.")
    dest.mkdir(parents=True)
    shutil.copy2(app, dest / "app.py")
    # The package is not on PyPI, so the Space carries its code: only the wings the app imports (no data
    # preparation, no training), without the sample images (the examples below are the few the demo
    # shows) or hidden files (.env, editor state).
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "static_space")  # the page: not the app
    (dest / "trashnet_hf").mkdir()
    shutil.copy2(PACKAGE / "__init__.py", dest / "trashnet_hf" / "__init__.py")
    for wing in SPACE_WINGS:
        shutil.copytree(PACKAGE / wing, dest / "trashnet_hf" / wing, ignore=skip)
    pins = _pins(SPACE_PACKAGES)
    texts = {
        "requirements.txt": "".join(f"{n}=={v}\n" for n, v in pins.items()),
        "README.md": _space_readme(model_id, space_id),
        "model_id.txt": f"{model_id}/{ONNX_FILE}\n",  # the ONNX export: no torch in the Space
    }
    for name, text in texts.items():
        redactor.write_text(dest / name, text, f"space/{name}")
    write_examples(dest / "examples", redactor, "space/examples/CREDITS.md")
    return dest


def published_onnx(model_repo: str) -> Path:
    """The model repo's ``model.onnx`` (cache first), for a --space-only build of the static Space."""
    return hub.download_file(
        model_repo,
        ONNX_FILE,
        hint=f"The static Space runs the {ONNX_FILE} that `trashnet-hf publish` uploads.",
    )


def _redactor(args: PublishArgs) -> Redactor:
    """The redactor for this build: the run's config names its folders (none with --space-only)."""
    config = {} if args.space_only else read_run(args.output_dir)[0].get("config", {})
    return Redactor.for_run(config if isinstance(config, dict) else {}, [args.output_dir, PROJECT])


def build(args: PublishArgs) -> Built:
    """Build OUT/publish/model (unless --space-only) and OUT/publish/space (with --space-repo).

    The folders are built in a hidden sibling of OUT/publish and swapped in only once complete and
    checked (``redact``), so a failed build leaves the previous one as it was."""
    out = Path(args.output_dir)
    publish = out / "publish"
    check_previous_build(publish)  # before any work
    redactor = _redactor(args)
    out.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would become the published folder's; mkdir honours the umask.
    staging = out / f".publish-building-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        if not args.space_only:
            build_model_folder(out, staging / "model", args.model_repo, redactor, args.compare_with)
        if args.space_repo is not None:
            build_space_folder(staging / "space", args.model_repo, args.space_repo, redactor)
        if args.static_space_repo is not None:
            onnx_path = (
                staging / "model" / ONNX_FILE if not args.space_only else published_onnx(args.model_repo)
            )
            build_static_folder(
                staging / "static", onnx_path, args.model_repo, args.static_space_repo, redactor,
                args.ort_web_tarball,
            )  # fmt: skip
        redactor.audit(staging)  # every file, as bytes: no local path, no secret
        (staging / MARKER).write_text(json.dumps({"built_by": BUILT_BY, "files": _digests(staging)}))
        _swap_in(staging, publish)
    finally:
        if staging.exists():  # the build failed: drop it, the previous one is untouched
            shutil.rmtree(staging)
    built = Built(
        None if args.space_only else publish / "model",
        None if args.space_repo is None else publish / "space",
        None if args.static_space_repo is None else publish / "static",
    )
    for folder in (built.model, built.space, built.static):
        if folder is not None:
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            logger.info("Built %s (%d files):\n  %s", folder, len(files), "\n  ".join(files))
    return built


# --- Push -------------------------------------------------------------------------------------------


def check_can_push(api: HfApi) -> str:
    """The Hub user the saved token belongs to; UserError in seconds when there is no token, the Hub
    cannot be reached or it refuses the token. Run it before any long work (training, a build)."""
    if get_token() is None:  # HF_TOKEN, or the file `hf auth login` saves; the value is not kept
        raise UserError(f"Cannot push to the Hub: {NO_TOKEN}")
    hub.require_online("push to the Hub", "Or build the folders offline with --dry-run and push later.")
    try:
        return api.whoami()["name"]
    except HfHubHTTPError as err:
        raise UserError(
            f"The Hub refused the token ({_reason(err)}): run `hf auth login` with a token that has write "
            "access, or set HF_TOKEN to one."
        ) from None


def _reason(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


# What huggingface_hub's own http_backoff retries (its defaults in huggingface_hub.utils._http): timeouts,
# network errors and dropped connections; 408, 429 and 5xx answers. Anything else is a refusal.
TRANSIENT_ERRORS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def _transient(err: Exception) -> bool:
    """A failure worth retrying, by http_backoff's rules; not a refusal (401/403/404) or a bad request."""
    if isinstance(err, HfHubHTTPError):
        return err.response is None or err.response.status_code in TRANSIENT_STATUS
    return isinstance(err, TRANSIENT_ERRORS)


def with_retries(what: str, call: Callable[[], T], tries: int = UPLOAD_TRIES) -> T:
    """``call()``, tried up to ``tries`` times with exponential backoff on transient failures.

    huggingface_hub 2.4 retries single HTTP requests (``http_backoff``), but only inside an upload's
    preupload and file transfers: ``create_repo`` and the commit POST that ``upload_folder`` ends with
    are sent once (only ``upload_large_folder`` retries its commits, and it splits a folder into several
    commits and writes state into it). So this repeats the whole call, on the failures http_backoff
    counts as transient."""
    for attempt in range(1, tries + 1):
        try:
            return call()
        except (HfHubHTTPError, httpx2.TransportError) as err:
            if attempt == tries or not _transient(err):
                raise UserError(f"{what} failed after {attempt} attempt(s): {_reason(err)}") from err
            delay = BACKOFF_S * 2 ** (attempt - 1)
            logger.warning(
                "%s failed (%s); trying again in %.0f s (%d/%d)", what, _reason(err), delay, attempt, tries
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def push(built: Built, args: PublishArgs, api: HfApi) -> list[str]:
    """Create (exist_ok) and upload each built folder in one commit; the URLs of the repos."""
    uploads = []
    if built.model is not None:
        uploads.append((built.model, args.model_repo, "model", {}))
    if built.space is not None:
        uploads.append((built.space, args.space_repo, "space", {"space_sdk": "gradio"}))
    if built.static is not None:
        uploads.append((built.static, args.static_space_repo, "space", {"space_sdk": "static"}))
    urls = []
    for folder, repo_id, repo_type, extra in uploads:
        create = partial(
            api.create_repo, repo_id, repo_type=repo_type, private=args.private, exist_ok=True, **extra
        )
        upload = partial(
            api.upload_folder, repo_id=repo_id, folder_path=folder, repo_type=repo_type,
            commit_message=f"Publish {repo_type} from trashnet-hf",
            ignore_patterns=["*__pycache__*", "*.pyc"],
        )  # fmt: skip
        try:
            url = with_retries(f"Creating {repo_type} repo {repo_id}", create)
            with_retries(f"Uploading {folder} to {repo_type} repo {repo_id}", upload)
        except UserError as err:
            raise UserError(
                f"{err}. The built folders stay in {folder.parent}; run the same command again."
            ) from err
        urls.append(str(url))
        logger.info("Published %s to %s", folder, url)
    return urls


def publish(args: PublishArgs, api: HfApi | None = None) -> Built:
    """Build the folders, then (unless --dry-run) upload them; ``api`` defaults to an ``HfApi()``, which
    finds the token itself."""
    if args.space_repo is not None:
        logger.warning(
            "Space: %s (--static-space-repo builds a demo that is free to host.)", SUBSCRIPTION_NOTE
        )
    if not args.dry_run:
        api = api or HfApi()
        logger.info("Pushing as Hub user %s", check_can_push(api))  # before the build: fails in seconds
        if args.space_only and not with_retries(
            f"Checking model repo {args.model_repo}", lambda: api.repo_exists(args.model_repo)
        ):
            raise UserError(
                f"--model-repo {args.model_repo}: no such model repo (or the token cannot see it); publish "
                "the model first, without --space-only."
            )
    built = build(args)
    if args.dry_run:
        logger.info("Dry run: nothing uploaded. Push with the same command without --dry-run.")
        return built
    push(built, args, api)
    return built


def ready_to_push(api: HfApi | None = None) -> HfApi:
    """train.py --push-to-hub, before training: the client to publish with, once the token and the Hub
    are known to work (UserError in seconds otherwise)."""
    api = api or HfApi()
    logger.info("--push-to-hub: pushing as Hub user %s after training", check_can_push(api))
    return api


def publish_trained(cfg: TrainConfig, completed: bool, api: HfApi) -> None:
    """train.py --push-to-hub, after training: publish the run from the main process only."""
    from accelerate import PartialState  # the training stack is loaded by now

    hint = f"trashnet-hf publish {cfg.output_dir} --model-repo {cfg.hub_model_id}"
    if not completed:
        logger.warning("Not published: the run did not finish. Publish a finished run later with: %s", hint)
        return
    if PartialState().is_main_process:
        args = PublishArgs(
            cfg.output_dir, cfg.hub_model_id, space_repo=cfg.hub_space_id, private=cfg.hub_private_repo
        )
        publish(args, api)


def _run(args: PublishArgs) -> int:
    publish(args)
    return 0


def main(argv: list[str] | None = None, prog: str = "trashnet-hf publish") -> int:
    return cli.run(PublishArgs, _run, argv, description=__doc__, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
