"""The served app as a hostile client sees it: the raw HTTP API (``/gradio_api/call/...`` with httpx, no
gradio_client), with server paths, paths outside the upload cache, tiny and thin data: URLs and feedback
pointing at a server file. Each is refused, with one answer whatever the path, nothing is read, copied or
written, and the server keeps serving."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.conftest import CLASSES, photo
from tests.test_app_server import Served, serve
from trashnet_hf.serving.app import NOT_UPLOADED
from trashnet_hf.serving.classifier import open_image
from trashnet_hf.serving.feedback import METADATA_FILE

pytestmark = pytest.mark.slow  # a server of its own: ~10 s with the requests

META = {"_type": "gradio.FileData"}  # the tag Gradio's own upload check keys on


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Gradio's upload cache for this module's server (GRADIO_TEMP_DIR), so it can be listed exactly."""
    folder = tmp_path_factory.mktemp("gradio-uploads")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def served(uploads: Path, trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(trained_run, tmp_path_factory.mktemp("app")) as app:
        yield app


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=120) as client:
        yield client


def call(http: httpx.Client, api: str, data: list[Any]) -> tuple[str, Any]:
    """POST ``/gradio_api/call/<api>``, then read the event stream: ("complete", outputs) or ("error",
    the message shown, None when Gradio hides it)."""
    response = http.post(f"/gradio_api/call/{api}", json={"data": data})
    response.raise_for_status()
    event = None
    with http.stream("GET", f"/gradio_api/call/{api}/{response.json()['event_id']}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event in ("complete", "error"):
                payload = json.loads(line.removeprefix("data: "))
                return event, payload["error"] if event == "error" and payload else payload
    raise AssertionError(f"/{api}: the event stream ended without a result")


def upload(http: httpx.Client, path: Path) -> dict[str, Any]:
    """A real upload through Gradio's /upload route, as the page sends it."""
    response = http.post("/gradio_api/upload", files=[("files", (path.name, path.read_bytes()))])
    response.raise_for_status()
    (cached,) = response.json()
    return {"path": cached, "orig_name": path.name, "meta": META}


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_still_serving(http: httpx.Client, served: Served) -> None:
    event, (label, _) = call(http, "classify", [upload(http, served.photos[0])])
    expected = served.classifier.predict([open_image(served.photos[0])])[0][0]["label"]
    assert event == "complete" and label["label"] == expected


def test_raw_api_refuses_every_path_that_is_not_an_upload(
    http: httpx.Client, served: Served, uploads: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.jpg"  # a real photo on the server, outside the upload cache
    photo(77).save(secret)
    (uploads / "planted").mkdir(exist_ok=True)
    (uploads / "planted" / "link.jpg").symlink_to(secret)  # inside the cache, pointing out of it
    paths = {
        "system file": "/etc/passwd",
        "server photo": str(secret),
        "an example's original": str(served.photos[1]),  # in allowed_paths, still not an upload
        "missing file": str(tmp_path / "no-such.jpg"),
        "missing folder": "/no/such/folder/photo.jpg",
        "dot-dot out of the cache": f"{uploads}/../{secret.parent.name}/secret.jpg",
        "symlink out of the cache": str(uploads / "planted" / "link.jpg"),
    }
    secret_bytes, cache_before = secret.read_bytes(), files_under(uploads)
    answers: dict[tuple[str, bool], set[Any]] = {}
    for case, path in paths.items():
        for tagged in (False, True):
            payload = {"path": path, "orig_name": "photo.jpg"} | ({"meta": META} if tagged else {})
            for api, data in (
                ("classify", [payload]),
                ("classify_batch", [[payload]]),
                ("feedback", [payload, CLASSES[0]]),
            ):
                event, answer = call(http, api, data)
                assert event == "error", (case, tagged, api, answer)
                answers.setdefault((api, tagged), set()).add(answer)
    # One answer per endpoint whatever the path, existing or not: ours, or Gradio's own hidden error when
    # its upload check (on tagged payloads) refuses first.
    assert all(len(seen) == 1 and seen <= {NOT_UPLOADED, None} for seen in answers.values()), answers
    assert answers[("classify", False)] == {NOT_UPLOADED}
    assert not served.feedback.exists() or not any(served.feedback.rglob("*"))  # nothing written
    assert files_under(uploads) == cache_before  # nothing copied into the cache either
    assert secret.read_bytes() == secret_bytes
    assert_still_serving(http, served)


def _png_data_url(size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("size", [(1, 1), (1, 100_000)], ids=["1x1", "1x100000"])
def test_raw_api_refuses_tiny_and_thin_data_urls(
    size: tuple[int, int], http: httpx.Client, served: Served
) -> None:
    payload = {"path": None, "url": _png_data_url(size), "meta": META}
    reason = f"pasted image: {size[0]}x{size[1]} pixels is too small to recognise anything"
    for api, data in (("classify", [payload]), ("feedback", [payload, CLASSES[0]])):
        event, answer = call(http, api, data)
        assert event == "error" and answer.startswith(reason), (api, answer)
    assert not served.feedback.exists() or not any(served.feedback.rglob("*"))
    assert_still_serving(http, served)


def test_feedback_records_the_prediction_for_that_very_image(served: Served) -> None:
    """Classify photo A, then correct photo B in the same session: B's line carries B's own prediction
    (once it carried the session's last answer, A's), and names the model without its path."""
    first, other = served.photos[0], served.photos[2]
    predicted = [served.classifier.predict([open_image(p)])[0][0] for p in (first, other)]
    assert predicted[0]["score"] != pytest.approx(predicted[1]["score"], abs=1e-3)  # A and B tell apart
    client = Client(served.url, verbose=False)
    client.predict(handle_file(str(first)), api_name="/classify")
    assert "saved as" in client.predict(handle_file(str(other)), CLASSES[1], api_name="/feedback")
    lines = [json.loads(x) for x in (served.feedback / METADATA_FILE).read_text().splitlines()]
    line = lines[-1]
    assert line["label"] == CLASSES[1] and line["predicted"] == predicted[1]["label"]
    assert line["predicted_score"] == round(predicted[1]["score"], 4)
    assert line["model"] == "out" and not Path(line["model"]).is_absolute()  # trained_run is <tmp>/out
