"""The static Space in headless chromium, beside ``Classifier`` (ONNX, Python) on the same photos.

    trashnet-hf publish OUT --model-repo U/N --static-space-repo U/N-web --dry-run
    python bench/static_space.py --static-dir OUT/publish/static

Serves the built folder on loopback with ``http.server`` (plain files, as the Hub serves a static Space),
opens it in Debian's chromium through Playwright with an empty cache, and feeds the bundled sample photos
(the first --per-class of each class) through the page's file input. Prints:

- the page weight: every file the page loads, total and gzipped (the Hub compresses what it serves);
- the time from navigation to the first answer (download, onnxruntime-web start-up, model load, first
  photo), then per photo after that (median, from setting the file to the answer shown), and the
  page's own split into preprocessing and model time;
- beside them, ``Classifier.load("model.onnx")`` in this process: load, then per photo (decode,
  preprocess, inference), and the top-1 agreement and largest probability difference with the page.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import os
import re
import statistics
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from trashnet_hf import SAMPLE_DIR  # noqa: E402


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/index.html"


NOT_LOADED = {"README.md", "ort/LICENSE", "examples/CREDITS.md"}  # in the repo, never fetched by the page


def page_weight(folder: Path) -> tuple[int, int]:
    """Bytes and gzip -9 bytes of everything the page can fetch (model.json included)."""
    files = [
        p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in NOT_LOADED
    ]
    return sum(p.stat().st_size for p in files), sum(
        len(gzip.compress(p.read_bytes(), 9, mtime=0)) for p in files
    )


def photos(per_class: int) -> list[Path]:
    classes = sorted(d for d in SAMPLE_DIR.iterdir() if d.is_dir())
    return [p for c in classes for p in sorted(c.glob("*.jpg"))[:per_class]]


def browser_run(url: str, paths: list[Path], chromium: str) -> dict:
    """Cold page load to the first answer, then each photo; the page's top-3 per photo."""
    from playwright.sync_api import expect, sync_playwright

    shown, per_photo, page_ms = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_context().new_page()  # a fresh context: nothing cached
        start = time.perf_counter()
        page.goto(url)
        expect(page.locator("body")).to_have_attribute("data-state", "ready", timeout=120_000)
        ready = time.perf_counter() - start
        for i, path in enumerate(paths):
            t0 = time.perf_counter()
            page.locator("#file").set_input_files(str(path))
            expect(page.locator("body")).to_have_attribute("data-state", "done", timeout=60_000)
            elapsed = time.perf_counter() - t0
            if i == 0:
                first = time.perf_counter() - start
            else:
                per_photo.append(elapsed)
            rows = page.locator("#results [data-label]").all()
            shown.append(
                [(r.get_attribute("data-label"), float(r.get_attribute("data-score"))) for r in rows]
            )
            page_ms.append(page.locator("#timing").inner_text().strip())
        browser.close()
    return {"ready": ready, "first": first, "per_photo": per_photo, "shown": shown, "timing": page_ms}


def python_run(model: Path, paths: list[Path]) -> dict:
    from trashnet_hf.serving.classifier import Classifier, open_image

    start = time.perf_counter()
    classifier = Classifier.load(model, "cpu")
    load = time.perf_counter() - start
    results, per_photo = [], []
    for path in paths:
        t0 = time.perf_counter()
        results.append(classifier.predict([open_image(path)], top_k=3)[0])
        per_photo.append(time.perf_counter() - t0)
    return {"load": load, "per_photo": per_photo[1:], "first": per_photo[0], "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--static-dir",
        required=True,
        type=Path,
        help="The folder `publish --dry-run` built (OUT/publish/static).",
    )
    parser.add_argument("--per-class", type=int, default=10, help="Sample photos per class (6 classes).")
    parser.add_argument(
        "--chromium",
        default=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
        help="The chromium binary Playwright drives (apt-get install chromium).",
    )
    args = parser.parse_args()
    if not (args.static_dir / "index.html").is_file() or not (args.static_dir / "model.onnx").is_file():
        parser.error(
            f"--static-dir {args.static_dir}: no index.html and model.onnx; build it with publish --dry-run"
        )
    if args.per_class < 1:
        parser.error(f"--per-class must be at least 1, got {args.per_class}")
    paths = photos(args.per_class)
    raw, gz = page_weight(args.static_dir)
    server, url = serve(args.static_dir)
    try:
        page = browser_run(url, paths, args.chromium)
    finally:
        server.shutdown()
    ours = python_run(args.static_dir / "model.onnx", paths)

    agree = sum(s[0][0] == r[0]["label"] for s, r in zip(page["shown"], ours["results"], strict=True))
    worst = max(
        abs(dict(s).get(x["label"], 0.0) - x["score"])
        for s, r in zip(page["shown"], ours["results"], strict=True)
        for x in r
        if x["label"] in dict(s)
    )
    mb = 1e6  # decimal megabytes, as the page shows them
    med = statistics.median
    print(f"static Space: {args.static_dir}  ({len(paths)} photos, headless chromium, 1 wasm thread)")
    print(f"page weight             {raw / mb:6.1f} MB   {gz / mb:5.1f} MB gzipped")
    print(f"{'':24}{'browser (onnxruntime-web)':>28}{'Python Classifier (ONNX)':>28}")
    print(f"{'load to ready':24}{page['ready']:>26.2f} s{ours['load']:>26.2f} s")
    print(f"{'load to first answer':24}{page['first']:>26.2f} s{ours['load'] + ours['first']:>26.2f} s")
    browser_ms, python_ms = med(page["per_photo"]) * 1000, med(ours["per_photo"]) * 1000
    print(f"{'per photo after (median)':24}{browser_ms:>25.0f} ms{python_ms:>25.0f} ms")
    split = [re.search(r"preprocessing (\d+) ms, inference (\d+) ms", t) for t in page["timing"][1:]]
    if all(split):
        pre, inf = (med(int(m.group(i)) for m in split) for i in (1, 2))
        print(
            f"the page's own timing (median after the first): preprocess {pre:.0f} ms, inference {inf:.0f} ms"
        )
    print(f"top-1 agreement {agree}/{len(paths)}; largest probability difference {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
