"""Publish a training run to the Hugging Face Hub: the model repo (weights, card, plots, results) and the
Gradio Space (the demo, self-contained).

    python -m trashnet_hf.publish OUT --model-repo USER/NAME --space-repo USER/NAME-demo --dry-run
    python -m trashnet_hf.publish OUT --model-repo USER/NAME --space-repo USER/NAME-demo
    python -m trashnet_hf.publish build --space-only --model-repo USER/NAME --space-repo USER/NAME-demo

Both folders are built under OUT/publish/ (model/ and space/) first, then each is uploaded in one
commit after ``create_repo(exist_ok=True)``. --dry-run stops after the build: the offline twin of a push.
The token comes from HF_TOKEN or the saved login (``hf auth login``); this code only checks that one
exists and never reads, logs or writes it. With hub.py, the only module that talks to the Hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx2
from huggingface_hub import HfApi, SpaceCard, SpaceCardData, get_token
from huggingface_hub.errors import HfHubHTTPError

import trashnet_hf
from trashnet_hf import SAMPLE_DIR, cli, example_photo, hub
from trashnet_hf.card import render_card
from trashnet_hf.errors import ConfigError, UserError

if TYPE_CHECKING:  # config.py imports timm (torch); the Space workflow builds without them
    from trashnet_hf.config import TrainConfig

logger = logging.getLogger(__name__)

PACKAGE = Path(trashnet_hf.__file__).resolve().parent
PROJECT = PACKAGE.parent  # a checkout: app.py and requirements.txt sit beside the package
# Marks OUT/publish as this module's build, with the SHA-256 of every file it wrote: a rebuild replaces
# the folder only when nothing in it was added or edited since (see claim_publish_dir).
MARKER = ".trashnet-hf-build.json"
MODEL_FILES = ("config.json", "model.safetensors")
RUN_FILES = ("results.json", "confusion_matrix.png", "curves.png", "reliability.png")
# What the Space installs: the app's runtime imports, pinned to requirements.txt (tests/test_publish.py
# checks them against what app.py loads). Serving decodes with trashnet_hf.decoding, so the data stack
# (datasets, imagehash, scikit-learn) stays out; scipy comes in through torchvision. Not gradio: a Gradio
# Space installs the version its README's sdk_version names.
SPACE_PACKAGES = (
    "torch", "torchvision", "transformers", "timm", "huggingface_hub", "httpx2", "safetensors", "pillow",
    "numpy", "scipy",
)  # fmt: skip
SUBSCRIPTION_NOTE = (
    "A Gradio Space on the free cpu-basic hardware needs a PRO (user) or Team/Enterprise (organisation) "
    "subscription on the Hub (paid hardware needs billing instead); the model repo and "
    "pipeline('image-classification', model=...) need none."
)
NO_TOKEN = (
    "no Hugging Face token: run `hf auth login` (or set HF_TOKEN to a token with write access), "
    "or build the folders offline with `python -m trashnet_hf.publish OUT --model-repo USER/NAME --dry-run` "
    "and push later."
)
UPLOAD_TRIES = 3
BACKOFF_S = 2.0  # then 4 s: a few tries ride out a Hub hiccup, not an outage

T = TypeVar("T")


@dataclass
class PublishArgs:
    """``python -m trashnet_hf.publish``: build the model repo and Space folders, then upload them."""

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
    private: bool = field(
        default=False, metadata={"help": "Create the repos private (an existing repo keeps its visibility)."}
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Build the folders and list their files, then stop: no token, no network."},
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
        out = Path(self.output_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"OUT: {out} is a file; pass train.py's output folder.")
        if self.space_only:
            if self.space_repo is None:
                raise ConfigError("--space-only builds the Space: pass --space-repo USER/NAME.")
            return
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


# --- Build ------------------------------------------------------------------------------------------


def _digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative path, without the marker and byte-code caches
    (importing the Space's app.py writes them; they are never uploaded)."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != MARKER and "__pycache__" not in path.parts:
            with path.open("rb") as f:
                digests[rel] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests


def claim_publish_dir(publish: Path) -> None:
    """Empty ``publish`` for a new build. An existing folder is replaced only when it is this module's
    previous build, unchanged: it holds the marker and every file in it has the digest the marker
    recorded. Anything else (no marker, a file added or edited by hand) is refused, naming it."""
    if not publish.exists():
        return
    marker = publish / MARKER
    if not marker.is_file():
        raise UserError(
            f"{publish} exists but was not built by trashnet_hf.publish (no {MARKER}); move it away or "
            "delete it, then run again."
        )
    recorded = json.loads(marker.read_text())["files"]
    changed = [rel for rel, digest in _digests(publish).items() if recorded.get(rel) != digest]
    if changed:
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        raise UserError(
            f"{publish}: {len(changed)} file(s) added or edited since the last build ({shown}); nothing is "
            "overwritten: move them (or the folder) away, then run again."
        )
    logger.info("Replacing the previous build in %s (unchanged since it was built)", publish)
    shutil.rmtree(publish)


def build_model_folder(out: Path, dest: Path, model_id: str) -> Path:
    """The model repo: weights, config, the card as README.md, the plots and results.json."""
    dest.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy2(out / "model" / name, dest / name)
    for name in RUN_FILES:
        if (out / name).is_file():
            shutil.copy2(out / name, dest / name)
    render_card(out, model_id).save(dest / "README.md")
    return dest


def _pins(names: tuple[str, ...]) -> dict[str, str]:
    """``name==version`` lines of requirements.txt for ``names`` (normalised as pip does)."""
    requirements = PROJECT / "requirements.txt"
    if not requirements.is_file():
        raise UserError(f"{requirements} not found: build the Space from a checkout of the project.")
    norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    pins = {}
    for line in requirements.read_text().splitlines():
        if match := re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==(\S+)\s*(#.*)?", line):
            pins[norm(match[1])] = match[2]
    missing = [n for n in names if norm(n) not in pins]
    if missing:
        raise UserError(f"{requirements} pins no version of {', '.join(missing)}; the Space needs one.")
    return {n: pins[norm(n)] for n in names}


def _examples(dest: Path) -> list[str]:
    """One real TrashNet photo per class from the bundled sample, as examples/<class>.jpg, credited."""
    dest.mkdir()
    classes = sorted(p.name for p in SAMPLE_DIR.iterdir() if p.is_dir())
    for name in classes:
        shutil.copy2(example_photo(name), dest / f"{name}.jpg")
    (dest / "CREDITS.md").write_text(
        "# Example images\n\nOne photo per class from **TrashNet** by Gary Thung and Mindy Yang (Stanford "
        "CS 229, 2016/17), `dataset-resized` form, bytes unchanged: "
        + ", ".join(f"`{c}.jpg` = `{c}/{c}1.jpg`" for c in classes)
        + ".\nUpstream: https://github.com/garythung/trashnet.\n\n"
        "License: MIT, Copyright (c) 2017 Gary Thung (the `LICENSE` of garythung/trashnet).\n"
    )
    return classes


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
        "it to do worse on photos of real bins.\n\nBuilt by `python -m trashnet_hf.publish` of the "
        "trashnet-hf project: `app.py`, the `trashnet_hf` package it imports, `requirements.txt`, "
        "`examples/` (TrashNet photos, MIT, see examples/CREDITS.md) and `model_id.txt` (the model the "
        "app loads).\n\n"
        f"Note: {SUBSCRIPTION_NOTE}\n"
    )
    return str(SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def build_space_folder(dest: Path, model_id: str, space_id: str) -> Path:
    """The Space: app.py, the package it imports, its requirements, README front matter, examples and
    the model id, so it runs from that folder alone."""
    app = PROJECT / "app.py"
    if not app.is_file():
        raise UserError(f"{app} not found: build the Space from a checkout of the project.")
    dest.mkdir(parents=True)
    shutil.copy2(app, dest / "app.py")
    # The package is not on PyPI, so the Space carries its code; the sample images stay behind (the
    # examples below are the few the demo shows).
    shutil.copytree(
        PACKAGE, dest / "trashnet_hf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "sample")
    )
    pins = _pins(SPACE_PACKAGES)
    (dest / "requirements.txt").write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
    (dest / "README.md").write_text(_space_readme(model_id, space_id))
    _examples(dest / "examples")
    (dest / "model_id.txt").write_text(model_id + "\n")
    return dest


def build(args: PublishArgs) -> Built:
    """Build OUT/publish/model (unless --space-only) and OUT/publish/space (with --space-repo)."""
    publish = Path(args.output_dir) / "publish"
    claim_publish_dir(publish)
    publish.mkdir(parents=True)
    model = (
        None
        if args.space_only
        else build_model_folder(Path(args.output_dir), publish / "model", args.model_repo)
    )
    space = None
    if args.space_repo is not None:
        space = build_space_folder(publish / "space", args.model_repo, args.space_repo)
    (publish / MARKER).write_text(json.dumps({"built_by": "trashnet_hf.publish", "files": _digests(publish)}))
    for folder in (model, space):
        if folder is not None:
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            logger.info("Built %s (%d files):\n  %s", folder, len(files), "\n  ".join(files))
    return Built(model, space)


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


def _transient(err: Exception) -> bool:
    """A failure worth retrying: the network, a rate limit or a server error; not a refusal (401/403/404)."""
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else None
        return status is None or status == 429 or status >= 500
    return True


def with_retries(what: str, call: Callable[[], T], tries: int = UPLOAD_TRIES) -> T:
    """``call()``, tried up to ``tries`` times with exponential backoff on transient failures.

    A small loop rather than a library (tenacity is not a dependency): huggingface_hub already retries
    single HTTP requests; this repeats the whole create_repo/commit when the Hub fails it."""
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
        logger.warning("Space: %s", SUBSCRIPTION_NOTE)
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

    hint = f"python -m trashnet_hf.publish {cfg.output_dir} --model-repo {cfg.hub_model_id}"
    if not completed:
        logger.warning("Not published: the run did not finish. Publish a finished run later with: %s", hint)
        return
    if PartialState().is_main_process:
        args = PublishArgs(cfg.output_dir, cfg.hub_model_id, cfg.hub_space_id, cfg.hub_private_repo)
        publish(args, api)


def _run(args: PublishArgs) -> int:
    publish(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(PublishArgs, _run, argv, description=__doc__, prog="python -m trashnet_hf.publish")


if __name__ == "__main__":
    sys.exit(main())
