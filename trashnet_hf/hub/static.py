"""The static Space: the exported ONNX model runs in the visitor's browser, so the demo needs no server.

A Gradio Space on the free cpu-basic hardware needs a paid plan; a static Space (``sdk: static``) is
free. ``trashnet-hf publish OUT --model-repo U/N --static-space-repo U/N-web`` builds OUT/publish/static/:

- the page (``static_space/``: index.html, app.js, preprocess.js, style.css), plain ES modules with no
  bundler, no CDN and no build step on the Hub (the Hub's static build command needs paid credits);
- ``ort/``: three files of onnxruntime-web (MIT) from npm at ORT_WEB_VERSION, each checked against the
  SHA-256 in ORT_WEB_FILES. The plain WebAssembly build is all a CNN needs (``ort.min.js`` would pull the
  28 MB WebGPU build); without COOP/COEP headers it runs one thread;
- ``model.onnx`` (the export checked for parity with PyTorch) and ``model.json`` beside it: labels,
  preprocessing and the "not sure" threshold read from the ONNX metadata, because onnxruntime-web does
  not expose ``metadata_props``; also the bin hints, the examples and each file's size for the page weight;
- ``examples/`` (one TrashNet photo per class, credited) and a README with the Space's front matter.

The npm tarball is downloaded once into a cache (XDG_CACHE_HOME or ~/.cache, ``trashnet-hf/npm``) and its
npm integrity checked; ``--ort-web-tarball FILE`` (``npm pack onnxruntime-web@VERSION``) serves offline.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

from huggingface_hub import SpaceCard, SpaceCardData

from trashnet_hf import SAMPLE_DIR, example_photo
from trashnet_hf.core.errors import UserError
from trashnet_hf.hub.redact import Redactor
from trashnet_hf.serving import hints

logger = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).resolve().parent / "static_space"  # the page's own files, shipped as package data
PAGE_FILES = ("index.html", "app.js", "preprocess.js", "style.css")
ORT_WEB_VERSION = "1.31.1"
ORT_WEB_TARBALL = f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{ORT_WEB_VERSION}.tgz"
# npm's own checksum of that tarball (``npm view onnxruntime-web@1.31.1 dist.integrity``).
ORT_WEB_INTEGRITY = (
    "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
)
# The vendored files (package/dist/<name> in the tarball) and their SHA-256: the page loads nothing else.
ORT_WEB_FILES = {
    "ort.wasm.min.mjs": "c21d9c326d453a4a61398270c804d5979e118540597cb0c07f7b3d64e6098234",
    "ort-wasm-simd-threaded.mjs": "30ed0b5cd1182ede931fea448afb567d4dc705ec957af09f108a2be5f770dac3",
    "ort-wasm-simd-threaded.wasm": "4b884c203b0fa48d057be3332c65513ff85aa3c5bddd6946acc0fab7ecda001d",
}
ORT_WEB_LICENSE = """MIT License

Copyright (c) Microsoft Corporation.

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""
MODEL_JSON_FORMAT = "trashnet-hf static model 1"
# Keys of the exported file's metadata_props (written by trashnet_hf.serving.onnx); read with the onnx
# package, so building the page needs neither torch nor onnxruntime.
LABELS_KEY, CFG_KEY = "trashnet_hf.labels", "trashnet_hf.pretrained_cfg"
THRESHOLD_KEY, RULE_KEY = "trashnet_hf.low_confidence_threshold", "trashnet_hf.low_confidence_rule"
OOD_THRESHOLD_KEY, OOD_RULE_KEY = "trashnet_hf.ood_threshold", "trashnet_hf.ood_rule"
OOD_OUTPUT = "ood_score"  # the graph's second output, when the model carries its out-of-distribution data
DEFAULT_LOW_CONFIDENCE = 0.6  # core.model's, for a model that stores no threshold (as the app does)
HOSTING_NOTE = "A static Space is free on the Hub: the page runs in each visitor's browser, no server."


class VendorError(UserError):
    """onnxruntime-web could not be fetched, or a file differs from the pinned checksums."""


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "trashnet-hf" / "npm"


def _check_integrity(data: bytes, where: str) -> None:
    algorithm, _, expected = ORT_WEB_INTEGRITY.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise VendorError(
            f"{where}: not onnxruntime-web {ORT_WEB_VERSION} as published on npm ({algorithm} "
            f"{actual[:16]}... != the pinned {expected[:16]}...); delete it and run again."
        )


def _download() -> bytes:
    import httpx2  # huggingface_hub's HTTP client, already installed

    fix = (
        f"run `npm pack onnxruntime-web@{ORT_WEB_VERSION}` where the registry is reachable and pass the "
        "file with --ort-web-tarball"
    )
    logger.info("Downloading onnxruntime-web %s from npm (%s)", ORT_WEB_VERSION, ORT_WEB_TARBALL)
    try:
        response = httpx2.get(ORT_WEB_TARBALL, timeout=60, follow_redirects=True)
        response.raise_for_status()
    except httpx2.HTTPError as err:
        raise VendorError(
            f"Cannot download {ORT_WEB_TARBALL} ({type(err).__name__}: {err}); {fix}."
        ) from None
    return response.content


def ort_web_tarball(path: str | os.PathLike | None = None) -> bytes:
    """The npm tarball of onnxruntime-web ORT_WEB_VERSION, integrity checked: ``path`` if given, else the
    cached copy, else downloaded from npm into the cache."""
    if path is not None:
        source = Path(path)
        if not source.is_file():
            raise VendorError(f"--ort-web-tarball {source}: no such file.")
        data = source.read_bytes()
        _check_integrity(data, str(source))
        return data
    cached = cache_dir() / f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"
    if cached.is_file():
        data = cached.read_bytes()
        _check_integrity(data, str(cached))
        return data
    data = _download()
    _check_integrity(data, ORT_WEB_TARBALL)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(cached)
    return data


def vendor_ort_web(dest: Path, tarball: str | os.PathLike | None = None) -> list[str]:
    """Write the ORT_WEB_FILES from the npm tarball into ``dest`` (with the licence), each file's SHA-256
    checked against the pinned one before it is written; the names written."""
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(ort_web_tarball(tarball)), mode="r:gz") as archive:
        for name, expected in ORT_WEB_FILES.items():
            member = archive.extractfile(f"package/dist/{name}")  # KeyError: not in this tarball
            data = member.read() if member is not None else b""
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise VendorError(
                    f"onnxruntime-web {ORT_WEB_VERSION} package/dist/{name}: SHA-256 {actual} is not the "
                    f"pinned {expected}; nothing was built."
                )
            (dest / name).write_bytes(data)
    (dest / "LICENSE").write_text(ORT_WEB_LICENSE, encoding="utf-8")
    return [*ORT_WEB_FILES, "LICENSE"]


def model_info(onnx_path: Path) -> dict[str, Any]:
    """Labels, preprocessing and "not sure" threshold from an exported model's metadata_props."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    if LABELS_KEY not in meta or CFG_KEY not in meta:
        raise UserError(
            f"{onnx_path} lacks the labels and preprocessing metadata `trashnet-hf export` writes; export "
            "the model with it."
        )
    cfg = json.loads(meta[CFG_KEY])
    threshold = json.loads(meta[THRESHOLD_KEY]) if THRESHOLD_KEY in meta else DEFAULT_LOW_CONFIDENCE
    return {
        "labels": json.loads(meta[LABELS_KEY]),
        "preprocessing": {
            "image_size": int(cfg["input_size"][-1]),
            "crop_pct": float(cfg.get("crop_pct", 0.875)),
            "interpolation": str(cfg.get("interpolation", "bicubic")),
            "mean": [float(v) for v in cfg["mean"]],
            "std": [float(v) for v in cfg["std"]],
        },
        "low_confidence": float(threshold),
        "low_confidence_rule": meta.get(RULE_KEY, "the default: the model stores no threshold"),
        # None: the model has no out-of-distribution score, and the page never says "not waste".
        "ood": None
        if OOD_THRESHOLD_KEY not in meta
        else {
            "output": OOD_OUTPUT,
            "threshold": float(json.loads(meta[OOD_THRESHOLD_KEY])),
            "rule": meta.get(OOD_RULE_KEY, "rule not recorded"),
        },
    }


def file_sizes(folder: Path, skip: str = "model.json") -> dict[str, dict[str, int]]:
    """Bytes and gzip -9 bytes of every file under ``folder`` (but ``skip``): what the page weighs."""
    sizes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != skip:
            data = path.read_bytes()
            sizes[rel] = {"bytes": len(data), "gzip": len(gzip.compress(data, 9, mtime=0))}
    return sizes


def _readme(model_id: str, space_id: str, weight: dict[str, int]) -> str:
    data = SpaceCardData(
        title=space_id.split("/")[1],
        sdk="static",
        app_file="index.html",
        license="mit",
        models=[model_id],
        emoji="♻️",
        colorFrom="green",
        colorTo="gray",
        pinned=False,
        short_description="Sort a photo of waste in your browser: the model runs on your device",
    )
    mb = 1e6  # decimal megabytes, as the page shows them
    body = (
        f"# {space_id.split('/')[1]}\n\nPick, drop, paste or photograph one item of waste; the model "
        f"[{model_id}](https://huggingface.co/{model_id}) sorts it into cardboard, glass, metal, paper, "
        "plastic or trash, **in your browser**: the photo never leaves your device. It learnt from "
        "TrashNet's studio photos (one object on a white board), so expect it to do worse on photos of "
        f"real bins.\n\n{HOSTING_NOTE}\n\nPage weight: {weight['bytes'] / mb:.1f} MB, "
        f"{weight['gzip'] / mb:.1f} MB gzipped, loaded once.\n\n"
        "Built by `trashnet-hf publish --static-space-repo` of the trashnet-hf project: `index.html` and "
        "its ES modules (no build step), `model.onnx` (the exported model, checked against PyTorch), "
        f"`model.json` (its labels and preprocessing), `ort/` (onnxruntime-web {ORT_WEB_VERSION}, MIT, "
        "from npm, SHA-256 pinned) and `examples/` (TrashNet photos, MIT, see examples/CREDITS.md). The "
        "page resizes with a port of Pillow's bicubic resampling, so it sees the same pixels as "
        "`pipeline('image-classification')`.\n"
    )
    return str(SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def write_examples(dest: Path, redactor: Redactor, shown_as: str) -> list[str]:
    """One real TrashNet photo per class from the bundled sample, as ``dest``/<class>.jpg, with their
    CREDITS.md (``shown_as``: its path in the upload, for the redactor's messages); the class names. Both
    Spaces use it."""
    dest.mkdir()
    classes = sorted(p.name for p in SAMPLE_DIR.iterdir() if p.is_dir())
    for name in classes:
        shutil.copy2(example_photo(name), dest / f"{name}.jpg")
    redactor.write_text(
        dest / "CREDITS.md",
        "# Example images\n\nOne photo per class from **TrashNet** by Gary Thung and Mindy Yang (Stanford "
        "CS 229, 2016/17), `dataset-resized` form, bytes unchanged: "
        + ", ".join(f"`{c}.jpg` = `{c}/{c}1.jpg`" for c in classes)
        + ".\nUpstream: https://github.com/garythung/trashnet.\n\n"
        "License: MIT, Copyright (c) 2017 Gary Thung (the `LICENSE` of garythung/trashnet).\n",
        shown_as,
    )
    return classes


def build_static_folder(
    dest: Path, onnx_path: Path, model_id: str, space_id: str, redactor: Redactor, tarball: str | None = None
) -> Path:
    """The static Space in ``dest``: the page, ort/, model.onnx, model.json, examples/ and README.md."""
    missing = [n for n in PAGE_FILES if not (PAGE_DIR / n).is_file()]
    if missing:
        raise UserError(
            f"{PAGE_DIR} lacks {', '.join(missing)}: build from a complete install of trashnet-hf."
        )
    dest.mkdir(parents=True)
    for name in PAGE_FILES:
        shutil.copy2(PAGE_DIR / name, dest / name)
    vendor_ort_web(dest / "ort", tarball)
    shutil.copy2(onnx_path, dest / "model.onnx")
    info = model_info(dest / "model.onnx")
    classes = write_examples(dest / "examples", redactor, "static/examples/CREDITS.md")
    examples = [{"label": c, "file": f"examples/{c}.jpg"} for c in classes]
    sizes = file_sizes(dest)  # before the README: the Hub serves it as the Space's card, not to the page
    weight = {k: sum(s[k] for s in sizes.values()) for k in ("bytes", "gzip")}
    redactor.write_text(dest / "README.md", _readme(model_id, space_id, weight), "static/README.md")
    model_json = {
        "format": MODEL_JSON_FORMAT,
        "model": "model.onnx",
        "input": "pixel_values",
        "output": "logits",
        **info,
        "foreign": {"message": hints.FOREIGN_MESSAGE, "advice": hints.FOREIGN_ADVICE},
        "bin_hints": {
            label: hints.BIN_HINTS.get(label, "") for label in info["labels"]
        },  # "": none (as the app)
        "examples": examples,
        "limits": {
            "min_side": hints.MIN_SIDE,
            "max_file_bytes": hints.MAX_FILE_BYTES,
            "max_pixels": hints.MAX_PIXELS,
            "max_aspect": hints.MAX_SIDE_RATIO,
        },
        "files": sizes,
    }
    redactor.write_text(dest / "model.json", json.dumps(model_json, indent=2) + "\n", "static/model.json")
    return dest


def cached_tarball() -> Path | None:
    """The cached npm tarball, if an earlier build or ``python -m trashnet_hf.hub.static`` fetched it."""
    path = cache_dir() / f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"
    return path if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """Fetch onnxruntime-web ORT_WEB_VERSION from npm into the cache and check it (CI does this before
    the offline tests); a later build, and the static page's tests, then need no network."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trashnet_hf.hub.static", description=main.__doc__)
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        data = ort_web_tarball()
    except UserError as err:
        logger.error("%s", err)
        return err.exit_code
    logger.info(
        "onnxruntime-web %s: %s (%d bytes, integrity checked)", ORT_WEB_VERSION, cached_tarball(), len(data)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
