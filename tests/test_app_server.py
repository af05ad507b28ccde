"""The demo served for real on 127.0.0.1: called through gradio_client (the REST API), driven in Debian's
chromium by Playwright as a user would, and started from the Space folder the publish dry-run builds."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import Client, handle_file

from tests.conftest import CHROMIUM, CLASSES, make_learnable_folder, photo, screenshot_on_failure
from trashnet_hf.serving.app import TOP_K, AppArgs, create, launch
from trashnet_hf.serving.classifier import Classifier, open_image
from trashnet_hf.serving.hints import FOREIGN_MESSAGE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    url: str
    app_dir: Path
    photos: list[Path]  # one per class, also the page's examples
    classifier: Classifier

    @property
    def feedback(self) -> Path:
        return self.app_dir / "feedback"


@contextmanager
def serve(trained_run: Path, app_dir: Path) -> Iterator[Served]:
    """The app on a free loopback port, serving the session's tiny model, with examples/<class>.jpg."""
    data = make_learnable_folder(app_dir / "photos", per_class=1, size=(96, 72))
    (app_dir / "examples").mkdir()
    photos = [shutil.copy(data / c / f"{c}0.jpg", app_dir / "examples" / f"{c}.jpg") for c in CLASSES]
    args = AppArgs(
        model=str(trained_run / "model"), host="127.0.0.1", port=free_port(),
        feedback_dir=str(app_dir / "feedback"), threads=1,
    )  # fmt: skip
    threads = torch.get_num_threads()
    blocks, examples = create(args, app_dir)
    _, url, _ = launch(blocks, args, examples, prevent_thread_lock=True, quiet=True)
    try:
        yield Served(url, app_dir, [Path(p) for p in photos], Classifier.load(trained_run / "model", "cpu"))
    finally:
        blocks.close()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def served(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(trained_run, tmp_path_factory.mktemp("app")) as app:
        yield app


@pytest.mark.slow
def test_rest_api_single_and_batch(served: Served, tmp_path: Path) -> None:
    client = Client(served.url, verbose=False)
    expected = [served.classifier.predict([open_image(p)])[0] for p in served.photos]
    for path, ranked in zip(served.photos, expected, strict=True):
        label, text = client.predict(handle_file(str(path)), api_name="/classify")
        assert label["label"] == ranked[0]["label"]
        got = [(c["label"], c["confidence"]) for c in label["confidences"]]
        assert [g[0] for g in got] == [r["label"] for r in ranked[:TOP_K]]
        assert [g[1] for g in got] == pytest.approx([r["score"] for r in ranked[:TOP_K]], abs=1e-4)
        assert "Model time" in text

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    table, csv_file = client.predict(
        [handle_file(str(p)) for p in [*served.photos, bad]], api_name="/classify_batch"
    )
    assert table["headers"] == ["file", "label", "score", "note", "ood_score", "not_waste"]
    rows = table["data"]
    assert [r[1] for r in rows[:-1]] == [r[0]["label"] for r in expected]
    assert [r[2] for r in rows[:-1]] == pytest.approx([r[0]["score"] for r in expected], abs=1e-4)
    assert rows[-1][0] == "bad.png" and "0 bytes" in rows[-1][3]
    assert Path(csv_file).read_text().splitlines()[0] == "file,label,score,note,ood_score,not_waste"

    # A bad single upload is a plain error message, and the server keeps serving.
    with pytest.raises(Exception, match="0 bytes"):
        client.predict(handle_file(str(bad)), api_name="/classify")
    label, _ = client.predict(handle_file(str(served.photos[0])), api_name="/classify")
    assert label["label"] == expected[0][0]["label"]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}: apt-get install -y chromium")
def test_browser_upload_label_and_feedback(served: Served) -> None:
    from playwright.sync_api import expect, sync_playwright

    picture = served.photos[1]
    predicted = served.classifier.predict([open_image(picture)])[0][0]["label"]
    correction = next(c for c in CLASSES if c != predicted)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        with screenshot_on_failure(page, "test_browser_upload_label_and_feedback"):
            page.goto(served.url)
            expect(page.locator("button.gallery-item")).to_have_count(len(CLASSES), timeout=60_000)
            page.locator("#photo input[type=file]").set_input_files(str(picture))
            shown = page.locator("#scores [data-testid=label-output-value]")
            expect(shown).to_have_text(predicted, timeout=30_000)
            expect(page.locator("#verdict")).to_contain_text("Model time", timeout=10_000)

            page.get_by_role("combobox", name="It is really").click()
            page.get_by_role("option", name=correction, exact=True).click()
            page.locator("#send-feedback").click()
            expect(page.locator("#feedback-status")).to_contain_text(f"saved as {correction}", timeout=30_000)
        browser.close()
    saved = list((served.feedback / correction).glob("*.jpg"))
    assert len(saved) == 1
    assert open_image(saved[0]).size == open_image(picture).size


@pytest.mark.slow
def test_space_folder_runs_on_its_own(trained_run: Path, tmp_path: Path) -> None:
    """`python app.py` in the folder the publish dry-run builds, with only that folder on the path; the model
    comes from model_id.txt (here a local folder: the Hub is out of reach)."""
    from trashnet_hf.hub import publish

    build = tmp_path / "build"
    rc = publish.main(
        [str(build), "--space-only", "--model-repo", "alice/m", "--space-repo", "alice/demo", "--dry-run"]
    )
    assert rc == 0
    space = build / "publish" / "space"
    (space / "model_id.txt").write_text(f"{trained_run / 'model'}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MODEL_ID")}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "app.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), "--threads", "1"],
            cwd=space, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        client = _wait_for(f"http://127.0.0.1:{port}/", proc, log)
        glass = space / "examples" / "glass.jpg"  # a real TrashNet photo; the tiny model knows alpha..gamma
        label, text = client.predict(handle_file(str(glass)), api_name="/classify")
        (expected,) = Classifier.load(trained_run / "model", "cpu").assess([open_image(glass)])
        # Unlike its colour photos, the tiny model's OOD score may call it "not waste": then no label.
        assert label.get("label") == (None if expected.foreign else expected.ranked[0]["label"])
        assert (FOREIGN_MESSAGE in text) == expected.foreign
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert f"from {space / 'model_id.txt'}" in text
    assert f"trashnet_hf from {space / 'trashnet_hf'}" in text  # the Space's copy, not the checkout's


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> Client:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return Client(url, verbose=False)
        except httpx.TransportError:  # not listening yet
            time.sleep(1)
    pytest.fail(f"app.py did not serve {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_feedback_round_trip_into_training(trained_run: Path, tmp_path: Path) -> None:
    """Corrections recorded through the app's API, then a training run with --extra-data-dir: they are in
    its train split and nowhere else, and the one that is a validation photo is dropped and reported."""
    from trashnet_hf.core.config import DataConfig, TrainConfig
    from trashnet_hf.data import prepare_data
    from trashnet_hf.training.loop import train

    data = make_learnable_folder(tmp_path / "data")
    common = {"data_dir": str(data), "cache_dir": str(tmp_path / "cache"), "image_size": 32,
              "near_duplicate_threshold": 0}  # fmt: skip  # HASH_ONLY: synthetic textures
    # The split training will make (prepare_data with no embedder groups by hash, as HASH_ONLY does).
    planned = prepare_data(DataConfig(output_dir=str(tmp_path / "plan"), **common))
    val_row = next(r for r in planned.manifest if r["split"] == "val")
    new = []
    for k, label in enumerate(CLASSES):
        new.append((tmp_path / f"new{k}.jpg", label))
        photo(9000 + k, (96, 72)).save(new[-1][0])
    with serve(trained_run, tmp_path / "app") as app:
        client = Client(app.url, verbose=False)
        for path, label in [*new, (Path(val_row["path"]), val_row["label"])]:
            message = client.predict(handle_file(str(path)), label, api_name="/feedback")
            assert f"saved as **{label}**" in message
    feedback = app.feedback
    recorded = {p: p.parent.name for p in feedback.glob("*/*.jpg")}
    assert len(recorded) == 4

    out = tmp_path / "out"
    cfg = TrainConfig(
        **common, extra_data_dir=str(feedback), output_dir=str(out), model_name="test_resnet",
        pretrained=False, epochs=1, batch_size=8, eval_batch_size=16, warmup_ratio=0.0, patience=0,
        report_to="none",
    )  # fmt: skip
    assert train(cfg).status == "completed"
    with (out / "split_manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    from_feedback = [r for r in rows if Path(r["path"]).is_relative_to(feedback)]
    assert all(r["split"] == "train" for r in from_feedback)
    assert len(from_feedback) == 3 and {r["label"] for r in from_feedback} == set(CLASSES)
    main = [r for r in rows if not Path(r["path"]).is_relative_to(feedback)]
    assert [(r["path"], r["split"]) for r in main] == [(r["path"], r["split"]) for r in planned.manifest]
    report = json.loads((out / "data_report.json").read_text())
    assert report["extra_data"]["num_read"] == 4 and report["extra_data"]["num_kept"] == 3
    (dropped,) = report["extra_data"]["dropped"]
    assert dropped["reason"] == f"same photo as val image {val_row['path']}"
    for split in ("val", "test"):
        assert report["splits"][split] == planned.report["splits"][split]
    assert sum(report["splits"]["train"].values()) == sum(planned.report["splits"]["train"].values()) + 3
