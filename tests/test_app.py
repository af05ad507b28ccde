"""The demo's functions (serving.app) on real and bad images, the model lookup and the feedback store, and
the "not waste" verdict through the served app.

The served model is the session's tiny ``trained_run`` (classes alpha, beta, gamma, learnable colours):
every expected score and OOD verdict comes from ``Classifier.predict``/``assess`` on the same file, never
from a hard-coded number. Its OOD data marks photos unlike its colour photos (random textures, real
TrashNet photos, a checkerboard) as foreign, so tests that need a label shown use its own kind of photo.
The "not waste" test through the served app serves ``trashnet_run`` instead (the same tiny model trained
on the bundled TrashNet sample): a foreign image gets the message, a real TrashNet photo a plain label.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests import test_app_security as raw
from tests.conftest import ASTRONAUT, jpeg_bytes, make_learnable_folder, photo, typical_test_photo
from tests.test_app_server import serve
from trashnet_hf import SAMPLE_DIR
from trashnet_hf.core.errors import UserError
from trashnet_hf.core.model import ModelLoadError
from trashnet_hf.core.model_meta import OOD_FILE, OOD_KEYS
from trashnet_hf.serving import app
from trashnet_hf.serving.app import (
    BIN_HINTS,
    CSV_COLUMNS,
    EMPTY_VERDICT,
    MAX_BATCH_FILES,
    NOT_UPLOADED,
    TOP_K,
    Demo,
    build,
    example_files,
    ood_note,
    plain_text,
    public_model_name,
    resolve_model,
    threshold_note,
    verdict,
)
from trashnet_hf.serving.classifier import Assessment, Classifier, open_image
from trashnet_hf.serving.feedback import METADATA_FILE, FeedbackStore
from trashnet_hf.serving.hints import FOREIGN_ADVICE, FOREIGN_MESSAGE

TRASHNET = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


@pytest.fixture(scope="module")
def classifier(trained_run: Path) -> Classifier:
    return Classifier.load(trained_run / "model", device="cpu")


@pytest.fixture(autouse=True)
def uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Gradio's upload cache for the test (GRADIO_TEMP_DIR): the app reads files from there only."""
    folder = tmp_path / "gradio-uploads"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


@pytest.fixture
def demo(classifier: Classifier, tmp_path: Path) -> Demo:
    return Demo(classifier, "test-model", FeedbackStore(tmp_path / "feedback", classifier.labels))


def upload(path: Path) -> dict:
    """What Gradio hands an event that skips preprocessing: the file copied into its upload cache (as its
    /upload route does, in a folder of its own) and its original name."""
    cached = Path(os.environ["GRADIO_TEMP_DIR"]) / uuid.uuid4().hex / path.name
    cached.parent.mkdir()
    shutil.copyfile(path, cached)
    return {"path": str(cached), "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def expected_top(classifier: Classifier, path: Path) -> list[dict]:
    return classifier.predict([open_image(path)])[0]


def known_photos(folder: Path, size: tuple[int, int] = (96, 72)) -> list[Path]:
    """One photo per class of the kind the test model trained on (learnable colours): photos its OOD score
    does not flag, for the tests that need a label shown (those that rely on it check it)."""
    return sorted(make_learnable_folder(folder, per_class=1, size=size).glob("*/*.jpg"))


def closest_kinds(assessment: Assessment) -> str:
    """How the "not waste" verdict lists the top 3 (serving.app.foreign_verdict)."""
    return ", ".join(f"{r['label']} {r['score']:.1%}" for r in assessment.ranked[:TOP_K])


def assert_shows(classifier: Classifier, image: Image.Image, shown: tuple) -> None:
    """The demo's answer ``shown`` (Label value, verdict) is what ``Classifier.assess`` says of ``image``:
    its top 3 in the Label, or for a foreign photo no label and the "not waste" verdict with its top 3."""
    (expected,) = classifier.assess([image])
    scores, text = shown
    assert "Model time:" in text and " ms on CPU" in text
    if expected.foreign:
        assert scores is None and FOREIGN_MESSAGE in text and closest_kinds(expected) in text
        return
    assert FOREIGN_MESSAGE not in text
    assert list(scores) == [r["label"] for r in expected.ranked[:TOP_K]]  # best first, top 3 only
    assert list(scores.values()) == pytest.approx([r["score"] for r in expected.ranked[:TOP_K]], abs=1e-4)


@pytest.mark.real_data
def test_classify_real_photos_gives_the_classifiers_top_scores(
    real_data: Path, demo: Demo, classifier: Classifier
) -> None:
    for folder in sorted(p for p in real_data.iterdir() if p.is_dir()):
        path = sorted(folder.glob("*.jpg"))[0]
        assert_shows(classifier, open_image(path), demo.classify(upload(path)))


def test_verdict_gives_the_bin_and_flags_low_confidence() -> None:
    sure = [{"label": "glass", "score": 0.93}, {"label": "plastic", "score": 0.05}]
    text = verdict(sure, TRASHNET, 0.012, "cpu", 0.6)
    assert BIN_HINTS["glass"] in text and "Not sure" not in text and "12 ms on CPU" in text
    unsure = [{"label": "plastic", "score": 0.72}, {"label": "glass", "score": 0.2}]
    text = verdict(unsure, TRASHNET, 0.012, "cpu", 0.73)  # the threshold passed in, not a constant
    assert BIN_HINTS["plastic"] in text and "Not sure" in text and "one of the 6 kinds" in text
    assert "under 73.0%" in text
    assert "Not sure" not in verdict([{"label": "metal", "score": 0.73}], TRASHNET, 0.0, "cpu", 0.73)


def test_not_waste_verdict_shows_no_label_and_no_bin() -> None:
    ranked = [{"label": "glass", "score": 0.93}, {"label": "plastic", "score": 0.05}]
    text = app.foreign_verdict(Assessment(ranked, 812.5, True), 400.0, 0.012, "cpu")
    assert text.startswith(f"🚫 **{FOREIGN_MESSAGE}** {FOREIGN_ADVICE}")
    assert BIN_HINTS["glass"] not in text and "**Glass**" not in text and "Not sure" not in text
    assert "<small>Not-waste score 812.5, over this model's threshold 400." in text
    assert "the closest kinds would be: glass 93.0%, plastic 5.0%." in text and "12 ms on CPU" in text


def _write(folder: Path, name: str, make) -> Path:
    path = folder / name
    make(path)
    return path


BAD_UPLOADS = {
    "text file": ("notes.jpg", lambda p: p.write_text("not a photo"), "not an image format"),
    "0 bytes": ("empty.jpg", lambda p: p.write_bytes(b""), "0 bytes"),
    "truncated jpeg": ("cut.jpg", lambda p: p.write_bytes(jpeg_bytes(photo(1))[:300]), "cannot decode"),
    "1x1": ("dot.png", lambda p: Image.new("RGB", (1, 1), "red").save(p), "too small"),
    "bomb": ("huge.png", lambda p: Image.new("L", (200, 200)).save(p), "too many pixels"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_a_plain_gradio_error(
    case: str, demo: Demo, uploads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, make, reason = BAD_UPLOADS[case]
    path = _write(uploads, name, make)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # so 200x200 is a "bomb" without 200 MB of RAM
    with pytest.raises(gr.Error) as err:
        demo.classify({"path": str(path), "orig_name": f"my {name}"})
    assert reason in err.value.message and f"my {name}" in err.value.message
    assert str(uploads) not in err.value.message  # the temp path means nothing to the user


def test_missing_upload_is_a_plain_gradio_error(demo: Demo) -> None:
    with pytest.raises(gr.Error, match="no image arrived"):
        demo.classify({"path": None, "url": None})
    assert demo.classify(None) == (None, EMPTY_VERDICT)  # the image was cleared: no error


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK"])
def test_other_colour_modes_are_classified(
    mode: str, demo: Demo, classifier: Classifier, tmp_path: Path
) -> None:
    path = tmp_path / f"img.{'jpg' if mode == 'CMYK' else 'png'}"
    open_image(known_photos(tmp_path / "data")[0]).convert(mode).save(path)
    assert_shows(classifier, open_image(path), demo.classify(upload(path)))


def test_data_url_upload_is_classified(demo: Demo, classifier: Classifier, tmp_path: Path) -> None:
    data = known_photos(tmp_path / "data")[0].read_bytes()
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    assert_shows(classifier, open_image(data), demo.classify({"path": None, "url": url}))


def test_batch_gives_one_row_per_file_and_the_same_csv(
    demo: Demo, classifier: Classifier, image_folder: Path, tmp_path: Path
) -> None:
    # Two of the model's own kind of photo and a random texture, which its OOD score flags.
    good = [*known_photos(tmp_path / "data")[:2], sorted(image_folder.glob("*/*.jpg"))[0]]
    bad = _write(tmp_path, "bad.jpg", lambda p: p.write_text("nope"))
    rows, csv_path = demo.classify_batch([upload(p) for p in [good[0], bad, *good[1:]]])
    assert [r[0] for r in rows] == [good[0].name, "bad.jpg", good[1].name, good[2].name]
    assert rows[1][1:3] == ["", None] and "not an image" in rows[1][3] and rows[1][4:] == [None, ""]
    assessed = classifier.assess([open_image(p) for p in good])
    assert [a.foreign for a in assessed] == [False, False, True]  # both kinds of row are checked
    for row, a in zip([rows[0], *rows[2:]], assessed, strict=True):
        top = a.ranked[0]
        assert row[1] == top["label"] and row[2] == pytest.approx(top["score"], abs=1e-4)
        unsure = "not sure" if top["score"] < classifier.low_confidence else ""
        assert row[3] == ("not waste" if a.foreign else unsure)
        assert row[4] == pytest.approx(a.ood_score, rel=1e-5) and row[5] == str(a.foreign).lower()
    with Path(csv_path).open(newline="") as f:
        read = list(csv.reader(f))
    assert read == [
        ["file", "label", "score", "note", "ood_score", "not_waste"],
        *[["" if v is None else str(v) for v in r] for r in rows],
    ]


def _model_with_threshold(trained_run: Path, folder: Path, threshold: float | None) -> Classifier:
    """The tiny run's model with ``threshold`` stored in its config.json (None: no threshold, as in a model
    trained before thresholds were stored)."""
    shutil.copytree(trained_run / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("low_confidence_threshold", None)
    config.pop("low_confidence_rule", None)
    if threshold is not None:
        config.update(low_confidence_threshold=threshold, low_confidence_rule="a rule for the test")
    (folder / "config.json").write_text(json.dumps(config))
    return Classifier.load(folder, device="cpu")


def test_app_flags_by_the_threshold_the_model_stores(
    trained_run: Path, classifier: Classifier, tmp_path: Path
) -> None:
    path = known_photos(tmp_path / "data")[0]
    assert not classifier.assess([open_image(path)])[0].foreign  # a label is shown, "not sure" or not
    p = expected_top(classifier, path)[0]["score"]
    # A stored threshold on the other side of the photo's score from the default 0.6.
    stored = (p + 1) / 2 if p >= 0.6 else p / 2
    own = _model_with_threshold(trained_run, tmp_path / "model", stored)
    assert own.low_confidence == stored and own.low_confidence_rule == "a rule for the test"
    demo = Demo(own, "test-model", FeedbackStore(tmp_path / "feedback", own.labels))
    _, text = demo.classify(upload(path))
    assert ("Not sure" in text) == (p < stored) and ("Not sure" in text) != (p < 0.6)
    rows, _ = demo.classify_batch([upload(path)])
    assert rows[0][3] == ("not sure" if p < stored else "")
    note = threshold_note(own)
    assert f"under {stored:.1%}" in note and "this model stores" in note
    page = build(demo, [])
    assert note in [c.get("props", {}).get("value") for c in page.config["components"]]


def test_a_model_without_a_threshold_uses_the_default_and_says_so(
    trained_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="trashnet_hf.serving.classifier"):
        old = _model_with_threshold(trained_run, tmp_path / "model", None)
    assert old.low_confidence == 0.6 and old.low_confidence_rule is None
    assert "stores no low-confidence threshold" in caplog.text and "default 0.6" in caplog.text
    assert "under 60.0% (the default" in threshold_note(old)


@pytest.mark.parametrize("bad", [0, 1.5, "0.7", True])
def test_a_stored_threshold_that_is_not_a_score_is_refused(
    bad: object, trained_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        ModelLoadError, match=f"low_confidence_threshold must be a score between 0 and 1, got {bad!r}"
    ):
        _model_with_threshold(trained_run, tmp_path / "model", bad)


def test_batch_refuses_nothing_and_too_much(demo: Demo, image_folder: Path) -> None:
    with pytest.raises(gr.Error, match="Add one or more"):
        demo.classify_batch([])
    one = upload(next(image_folder.glob("*/*.jpg")))
    with pytest.raises(gr.Error, match=f"at most {MAX_BATCH_FILES}"):
        demo.classify_batch([one] * (MAX_BATCH_FILES + 1))


def test_feedback_is_an_imagefolder_dataset(demo: Demo, image_folder: Path, tmp_path: Path) -> None:
    import datasets

    photos = sorted(image_folder.glob("*/*.jpg"))[:2]
    demo.record_feedback(upload(photos[0]), "beta")
    message = demo.record_feedback(upload(photos[1]), "gamma")
    assert "gamma" in message and "2 correction" in message
    folder = tmp_path / "feedback"
    saved = sorted(folder.glob("*/*.jpg"))
    assert [p.parent.name for p in saved] == ["beta", "gamma"]
    lines = [json.loads(line) for line in (folder / METADATA_FILE).read_text().splitlines()]
    assert {line["file_name"] for line in lines} == {f"{p.parent.name}/{p.name}" for p in saved}
    for line, path in zip(lines, photos, strict=True):  # the model's own answer for that photo
        top = expected_top(demo.classifier, path)[0]
        assert line["predicted"] == top["label"] and line["predicted_score"] == round(top["score"], 4)
    # The saved photo is the upload (re-encoded as JPEG: close, not identical).
    diff = np.abs(np.asarray(Image.open(saved[0]), float) - np.asarray(open_image(photos[0]), float))
    assert diff.mean() < 3
    loaded = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    assert sorted(loaded["label"]) == ["beta", "gamma"]


def test_feedback_refuses_what_it_cannot_record(demo: Demo, image_folder: Path) -> None:
    one = upload(next(image_folder.glob("*/*.jpg")))
    with pytest.raises(gr.Error, match="photo first"):
        demo.record_feedback(None, "beta")
    with pytest.raises(gr.Error, match="Pick the right kind"):
        demo.record_feedback(one, None)
    with pytest.raises(gr.Error, match="not one of the model's classes"):
        demo.record_feedback(one, "banana")
    assert demo.store.count() == 0


def test_model_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_ID", raising=False)
    with pytest.raises(UserError, match="no model to serve"):
        resolve_model(None, tmp_path)
    for run, when in (("old", 1_000), ("new", 2_000)):
        config = tmp_path / "outputs" / run / "model" / "config.json"
        config.parent.mkdir(parents=True)
        config.write_text("{}")
        import os

        os.utime(config, (when, when))
    assert resolve_model(None, tmp_path) == (
        str(tmp_path / "outputs/new/model"),
        "newest local training output",
    )
    (tmp_path / "model_id.txt").write_text("user/published\n")
    assert resolve_model(None, tmp_path)[0] == "user/published"
    monkeypatch.setenv("MODEL_ID", "user/from-env")
    assert resolve_model(None, tmp_path)[0] == "user/from-env"
    assert resolve_model("some/flag", tmp_path)[0] == "some/flag"


def test_examples_prefer_the_space_folder(tmp_path: Path) -> None:
    assert [p.name for p in example_files(tmp_path, TRASHNET)] == [f"{c}1.jpg" for c in TRASHNET]
    (tmp_path / "examples").mkdir()
    photo(1).save(tmp_path / "examples" / "glass.jpg")
    found = example_files(tmp_path, TRASHNET)
    assert found[1] == tmp_path / "examples" / "glass.jpg" and len(found) == 6
    assert example_files(tmp_path, ["alpha"]) == []


def test_feedback_is_pushed_only_with_a_dataset_and_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from trashnet_hf.hub import client as hub
    from trashnet_hf.serving.app import AppArgs, _feedback_store

    args = AppArgs(feedback_dir=str(tmp_path / "fb"), feedback_dataset="alice/corrections")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    created = []

    class FakeScheduler:  # records what CommitScheduler would be given; no network
        def __init__(self, **kwargs) -> None:
            created.append(kwargs)
            self.lock = "the scheduler's lock"

    monkeypatch.setattr(hub, "CommitScheduler", FakeScheduler)
    assert _feedback_store(args, ["a", "b"]).lock != "the scheduler's lock" and not created  # no token
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (
        _feedback_store(args, ["a", "b"]).lock != "the scheduler's lock" and not created
    )  # Hub out of reach
    assert "stay local" in caplog.text and "HF_HUB_OFFLINE" in caplog.text
    monkeypatch.setattr(hub, "_unreachable_reason", lambda: None)
    store = _feedback_store(args, ["a", "b"])
    assert store.lock == "the scheduler's lock"  # writes and commits never interleave
    (kwargs,) = created
    assert kwargs["repo_id"] == "alice/corrections" and kwargs["repo_type"] == "dataset"
    assert (
        kwargs["folder_path"] == tmp_path / "fb"
        and kwargs["private"] is True
        and kwargs["token"] == "hf_test"
    )


def test_large_corrections_are_scaled_down(tmp_path: Path) -> None:
    from trashnet_hf.serving.feedback import MAX_SIDE

    store = FeedbackStore(tmp_path, ["a"])
    big = photo(4, (3000, 2000))
    saved = store.record(big, "a")
    assert Image.open(saved).size == (MAX_SIDE, round(MAX_SIDE * 2 / 3)) and big.size == (3000, 2000)


# --- Hostile requests: only uploads are read, the bounds hold for data: URLs, feedback is honest ---------


def _not_uploads(tmp_path: Path, uploads: Path) -> dict[str, object]:
    """Paths a client may send that are not uploads: every one must get the same answer."""
    server = tmp_path / "server"
    server.mkdir()
    photo(5).save(server / "photo.jpg")  # a real image on the server, outside the upload cache
    (uploads / "link").mkdir()
    (uploads / "link" / "photo.jpg").symlink_to(server / "photo.jpg")  # in the cache, pointing out of it
    return {
        "system file": "/etc/passwd",
        "missing file": str(server / "no-such-photo.jpg"),
        "missing folder": "/no/such/folder/photo.jpg",
        "server photo": str(server / "photo.jpg"),
        "dot-dot out of the cache": f"{uploads}/../server/photo.jpg",
        "symlink out of the cache": str(uploads / "link" / "photo.jpg"),
        "relative path": "photo.jpg",
        "not a string": 42,
        "NUL byte": f"{uploads}/a\x00b.jpg",
    }


def test_paths_that_are_not_uploads_are_refused_alike(
    demo: Demo, tmp_path: Path, uploads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = _not_uploads(tmp_path, uploads)
    monkeypatch.chdir(tmp_path / "server")  # where the relative "photo.jpg" would be found
    for case, path in cases.items():
        payload = {"path": path, "orig_name": "photo.jpg", "meta": {"_type": "gradio.FileData"}}
        with pytest.raises(gr.Error) as err:
            demo.classify(payload)
        assert err.value.message == NOT_UPLOADED, case  # the same words whether the path exists or not
        rows, _ = demo.classify_batch([payload, {"path": path}])
        assert rows[0] == ["photo.jpg", "", None, NOT_UPLOADED, None, ""], case
        assert rows[1][1:] == ["", None, NOT_UPLOADED, None, ""], case
        with pytest.raises(gr.Error) as err:
            demo.record_feedback(payload, "beta")
        assert err.value.message == NOT_UPLOADED, case
    assert demo.store.count() == 0 and not demo.store.folder.exists()  # nothing written
    _, text = demo.classify(upload(tmp_path / "server" / "photo.jpg"))  # the same photo, uploaded: read
    assert "Model time" in text


def test_the_feedback_folder_is_never_read_even_inside_the_upload_cache(
    classifier: Classifier, uploads: Path, image_folder: Path
) -> None:
    demo = Demo(classifier, "test-model", FeedbackStore(uploads / "feedback", classifier.labels))
    saved = demo.store.record(open_image(next(image_folder.glob("*/*.jpg"))), "beta")  # someone's correction
    with pytest.raises(gr.Error) as err:
        demo.classify({"path": str(saved)})
    assert err.value.message == NOT_UPLOADED


def _png_data_url(size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("size", "reason"),
    [((1, 1), "too small"), ((1, 100_000), "too small"), ((40, 1_000), "too thin"), ((31, 64), "too small")],
)
def test_data_urls_are_bounded_like_uploads(demo: Demo, size: tuple[int, int], reason: str) -> None:
    url = _png_data_url(size)
    with pytest.raises(gr.Error) as err:
        demo.classify({"path": None, "url": url})
    message = err.value.message
    assert message.startswith("pasted image: ") and reason in message and "\n" not in message
    with pytest.raises(gr.Error, match=reason):
        demo.record_feedback({"path": None, "url": url}, "beta")
    assert demo.store.count() == 0


def test_an_oversized_data_url_is_refused_before_decoding(
    demo: Demo, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(photo(3))).decode()
    monkeypatch.setattr(app, "MAX_FILE_BYTES", 1_000)

    def no_decoding(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded a data: URL over the size limit")

    monkeypatch.setattr(app.base64, "b64decode", no_decoding)
    with pytest.raises(gr.Error, match="pasted image: over the upload limit of 1,000 bytes"):
        demo.classify({"path": None, "url": url})


def test_feedback_records_the_prediction_for_that_very_image(
    demo: Demo, classifier: Classifier, image_folder: Path
) -> None:
    photos = sorted(image_folder.glob("*/*.jpg"))
    first, other = photos[0], photos[-1]
    top_first, top_other = expected_top(classifier, first)[0], expected_top(classifier, other)[0]
    assert top_first["score"] != pytest.approx(top_other["score"], abs=1e-3)  # the test can tell them apart
    demo.classify(upload(first))  # the page shows photo A ...
    demo.record_feedback(upload(other), "gamma")  # ... and a correction arrives for photo B
    (line,) = [json.loads(x) for x in (demo.store.folder / METADATA_FILE).read_text().splitlines()]
    assert line["predicted"] == top_other["label"]
    assert line["predicted_score"] == round(top_other["score"], 4)


def test_feedback_names_the_model_never_where_it_lies(
    classifier: Classifier, trained_run: Path, image_folder: Path, tmp_path: Path
) -> None:
    demo = Demo(classifier, str(trained_run / "model"), FeedbackStore(tmp_path / "fb", classifier.labels))
    demo.record_feedback(upload(next(image_folder.glob("*/*.jpg"))), "beta")
    text = (tmp_path / "fb" / METADATA_FILE).read_text()
    assert json.loads(text)["model"] == trained_run.name and str(trained_run) not in text
    assert public_model_name("alice/trashnet-lite0") == "alice/trashnet-lite0"  # a Hub id as it is
    onnx = tmp_path / "exports" / "model.onnx"
    onnx.parent.mkdir()
    onnx.write_bytes(b"")
    assert public_model_name(str(onnx)) == "model.onnx"


# --- "Not waste": the OOD verdict on the page, through the API and in the batch table ------------------


def checkerboard(size: tuple[int, int] = (96, 72), square: int = 8) -> Image.Image:
    """Black and white squares: high contrast, no colour, nothing like the test model's photos."""
    board = np.indices(size[::-1]).sum(0) // square % 2 * 255
    return Image.fromarray(np.stack([board] * 3, -1).astype(np.uint8))


def assert_not_waste(label: object, text: str, expected: Assessment) -> None:
    """What the page shows a foreign photo: an empty Label, the message and advice, the closest kinds in
    small print, no label named as the answer and no "not sure" notice."""
    assert label == {}  # gr.Label's value for None: no label, no confidences
    assert FOREIGN_MESSAGE in text and FOREIGN_ADVICE in text and "Not sure" not in text
    assert f"the closest kinds would be: {closest_kinds(expected)}." in text
    assert f"**{expected.ranked[0]['label'].capitalize()}**" not in text


@pytest.mark.slow  # a server of its own (~10 s), on the session's TrashNet run (~1 min to train)
def test_not_waste_through_the_served_app(trashnet_run: Path, tmp_path: Path) -> None:
    classifier = Classifier.load(trashnet_run / "model", device="cpu")
    board = tmp_path / "board.png"
    checkerboard().save(board)
    normal = typical_test_photo(trashnet_run, classifier)  # a real TrashNet photo of the run's test split
    assert normal.is_relative_to(SAMPLE_DIR) and normal.parent.name in classifier.labels
    # The precondition, so that this checks the app and not luck: the served model flags both foreign
    # images (a checkerboard and a real photo of an astronaut) and not the TrashNet photo.
    foreign, astronaut, known = classifier.assess([open_image(p) for p in (board, ASTRONAUT, normal)])
    assert foreign.foreign and astronaut.foreign and not known.foreign, (
        foreign.ood_score, astronaut.ood_score, known.ood_score, classifier.ood_threshold,
    )  # fmt: skip
    top = known.ranked[:TOP_K]
    with serve(trashnet_run, tmp_path / "app") as served:
        client = Client(served.url, verbose=False)
        assert_not_waste(*client.predict(handle_file(str(board)), api_name="/classify"), foreign)
        assert_not_waste(*client.predict(handle_file(str(ASTRONAUT)), api_name="/classify"), astronaut)
        label, text = client.predict(handle_file(str(normal)), api_name="/classify")
        assert label["label"] == top[0]["label"]  # a plain top 3, the model's own scores
        got = [(c["label"], c["confidence"]) for c in label["confidences"]]
        assert [g[0] for g in got] == [r["label"] for r in top]
        assert [g[1] for g in got] == pytest.approx([r["score"] for r in top], abs=1e-4)
        assert FOREIGN_MESSAGE not in text and FOREIGN_ADVICE not in text and "closest kinds" not in text
        assert f"**{top[0]['label'].capitalize()}**" in text and BIN_HINTS[top[0]["label"]] in text
        assert "Model time" in text
        files = [handle_file(str(p)) for p in (normal, board, ASTRONAUT)]
        table, csv_file = client.predict(files, api_name="/classify_batch")
        with httpx.Client(base_url=served.url, timeout=120) as http:  # the raw API, no gradio_client
            event, (label, text) = raw.call(http, "classify", [raw.upload(http, board)])
            components = http.get("/config").json()["components"]
    assert event == "complete"
    assert_not_waste(label, text, foreign)
    assert table["headers"] == CSV_COLUMNS
    for row, a in zip(table["data"], (known, foreign, astronaut), strict=True):
        assert row[1] == a.ranked[0]["label"] and row[4] == pytest.approx(a.ood_score, rel=1e-4)
        assert (row[3] == "not waste", row[5]) == (a.foreign, str(a.foreign).lower())
    lines = Path(csv_file).read_text().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert [line.rsplit(",", 1)[1] for line in lines[1:]] == ["false", "true", "true"]
    (note,) = [c["props"]["value"] for c in components if c.get("props", {}).get("elem_id") == "ood-note"]
    assert f"is over {classifier.ood_threshold:.4g} " in note and plain_text(classifier.ood_rule) in note


def test_a_model_without_ood_data_never_says_not_waste(
    trained_run: Path, classifier: Classifier, tmp_path: Path
) -> None:
    board = tmp_path / "board.png"
    checkerboard().save(board)
    assert classifier.assess([open_image(board)])[0].foreign  # with its OOD data, the model flags it
    bare = tmp_path / "model"
    shutil.copytree(trained_run / "model", bare)
    (bare / OOD_FILE).unlink()
    config = json.loads((bare / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in OOD_KEYS}))
    plain = Classifier.load(bare, device="cpu")
    assert plain.ood_threshold is None and plain.ood_rule is None
    demo = Demo(plain, "test-model", FeedbackStore(tmp_path / "feedback", plain.labels))
    scores, text = demo.classify(upload(board))
    assert list(scores) == [r["label"] for r in expected_top(plain, board)[:TOP_K]]
    assert FOREIGN_MESSAGE not in text and "Model time" in text
    rows, _ = demo.classify_batch([upload(board)])
    assert rows[0][3] != "not waste" and rows[0][4:] == [None, "false"]  # as the batch CLI writes it
    assert ood_note(plain) == ""
    ids = [c.get("props", {}).get("elem_id") for c in build(demo, []).config["components"]]
    assert "threshold-note" in ids and "ood-note" not in ids


def test_the_page_states_the_not_waste_rule_inert() -> None:
    rule = "95th percentile [click](http://evil.example) <img src=x onerror=alert(1)> $$x$$ **b**\nmore"
    note = ood_note(SimpleNamespace(ood_threshold=0.25, ood_rule=rule))
    assert "is over 0.25 (this model's threshold: 95th percentile " in note and "\n" not in note
    assert plain_text(rule) in note and "more" in note
    unescaped = re.sub(r"\\.", "", note)  # what Markdown would still read as syntax
    for sign in ("[click](", "<img", "$$", "**b", "http:"):
        assert sign in rule and sign not in unescaped  # shown as text: no link, HTML, formula or bold
    assert ood_note(SimpleNamespace(ood_threshold=None, ood_rule=None)) == ""
