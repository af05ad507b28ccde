"""The Space serves the model repo's ``model.onnx`` without torch: a Hub reference ``USER/NAME/model.onnx``
loads through the Hub client (cache first, offline from the cache, one line when neither has it), and the
Space folder the publish dry-run builds answers ``/classify`` in a process where torch, torchvision,
transformers and timm cannot be imported."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import httpx2
import numpy as np
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

from tests.conftest import fake_cache, make_learnable_folder
from trashnet_hf.core.errors import UserError
from trashnet_hf.hub import client as hub
from trashnet_hf.hub.client import HubUnavailableError
from trashnet_hf.serving import onnx as export_onnx
from trashnet_hf.serving.classifier import Classifier, open_image

BLOCKED = ("torch", "torchvision", "transformers", "timm")
# On PYTHONPATH as sitecustomize.py: each blocked package is not found, exactly as when it is not installed
# (importlib.util.find_spec gives None, and `import torch` raises ModuleNotFoundError).
BLOCKER = f"""
import sys

BLOCKED = {BLOCKED!r}


class _Hide:
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        return self.inner.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


sys.meta_path[:] = [_Hide(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
"""


@pytest.fixture(scope="module")
def onnx_file(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert export_onnx.main([str(trained_run / "model"), "--output", str(out)]) == 0
    return out


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache that the client reads by default."""
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.usefixtures("offline")
def test_a_hub_onnx_reference_loads_from_the_cache_offline(
    onnx_file: Path, hub_cache: Path, tmp_path: Path
) -> None:
    fake_cache(hub_cache, "model", "alice/trashnet", {"model.onnx": onnx_file.read_bytes()})
    from_hub = Classifier.load("alice/trashnet/model.onnx", device="cpu")
    local = Classifier.load(onnx_file, device="cpu")
    assert from_hub.backend == "onnx" and from_hub.labels == local.labels
    images = [
        open_image(p) for p in sorted(make_learnable_folder(tmp_path / "photos", per_class=1).rglob("*.jpg"))
    ]
    assert from_hub.predict(images) == local.predict(images)


@pytest.mark.usefixtures("offline", "hub_cache")
def test_a_hub_onnx_reference_neither_cached_nor_reachable_is_one_line_offline() -> None:
    with pytest.raises(HubUnavailableError) as err:
        Classifier.load("alice/trashnet/model.onnx", device="cpu")
    message = str(err.value)
    assert "\n" not in message
    assert "model.onnx of model 'alice/trashnet'" in message and "HF_HUB_OFFLINE" in message
    assert "No local file 'alice/trashnet/model.onnx' exists either" in message


@pytest.mark.usefixtures("unreachable", "hub_cache")
def test_a_hub_onnx_reference_with_the_hub_unreachable_fails_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match=r"model\.onnx of model 'alice/trashnet'.*cannot reach"):
        Classifier.load("alice/trashnet/model.onnx", device="cpu")
    assert time.perf_counter() - start < 10


@pytest.mark.usefixtures("hub_cache")
@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            RemoteEntryNotFoundError,
            r"Model 'alice/trashnet' on the Hub has no model\.onnx; publish the run again",
        ),
        (RepositoryNotFoundError, r"Model 'alice/trashnet' is not on the Hub, or is private"),
    ],
)
def test_a_hub_onnx_reference_the_hub_lacks_is_one_line(
    error: type[Exception], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def answer(*args: object, **kwargs: object) -> str:
        raise error(
            "404 Client Error", response=httpx2.Response(404, request=httpx2.Request("GET", "https://hf.co"))
        )

    monkeypatch.setattr(hub, "_unreachable_reason", lambda: None)  # the Hub answers...
    monkeypatch.setattr(hub, "hf_hub_download", answer)  # ...that it has no such file or repo
    with pytest.raises(UserError, match=message) as err:
        Classifier.load("alice/trashnet/model.onnx", device="cpu")
    assert "\n" not in str(err.value)


@pytest.mark.usefixtures("offline")
def test_a_missing_local_onnx_file_is_not_taken_for_a_hub_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trashnet_hf.core.model_meta import ModelLoadError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # "runs/lite0/model.onnx" names a local folder, not the repo runs/lite0
    with pytest.raises(ModelLoadError, match="does not exist; export one"):
        Classifier.load("runs/lite0/model.onnx", device="cpu")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url + "gradio_api/info", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"app.py did not answer within {seconds:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.mark.slow  # builds the Space, starts app.py in a fresh interpreter: about 20 s
def test_the_space_serves_the_onnx_model_without_torch(onnx_file: Path, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    from trashnet_hf.hub import publish

    build = tmp_path / "build"
    args = [str(build), "--space-only", "--model-repo", "alice/trashnet", "--space-repo", "alice/demo"]
    assert publish.main([*args, "--dry-run"]) == 0
    space = build / "publish" / "space"
    assert (space / "model_id.txt").read_text().strip() == "alice/trashnet/model.onnx"
    # The Space's model comes from model_id.txt through the Hub cache, as on the Hub (offline here).
    cache = tmp_path / "hub-cache"
    fake_cache(cache, "model", "alice/trashnet", {"model.onnx": onnx_file.read_bytes()})
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_", "GRADIO_"))}
    env |= {
        "PYTHONPATH": str(blocker), "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache), "GRADIO_ANALYTICS_ENABLED": "False",
    }  # fmt: skip
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "ModuleNotFoundError: No module named 'torch'" in blocked.stderr

    port = _free_port()
    log = tmp_path / "app.log"
    cmd = [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), "--threads", "1"]
    cmd += ["--feedback-dir", str(tmp_path / "feedback")]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=space, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for(url, proc, log)
        client = Client(url, verbose=False)
        reference = Classifier.load(onnx_file, device="cpu")
        photos = sorted(make_learnable_folder(tmp_path / "photos", per_class=1, size=(96, 72)).rglob("*.jpg"))
        for photo in photos:
            label, text = client.predict(handle_file(str(photo)), api_name="/classify")
            ranked = reference.predict([open_image(photo)])[0]
            assert label["label"] == ranked[0]["label"]
            got = [(c["label"], c["confidence"]) for c in label["confidences"]]
            assert [g[0] for g in got] == [r["label"] for r in ranked[: len(got)]]
            np.testing.assert_allclose(
                [g[1] for g in got], [r["score"] for r in ranked[: len(got)]], atol=1e-4
            )
            assert "Model time" in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    served = log.read_text()
    assert "Loaded a 3-class ONNX model" in served and "alice/trashnet/model.onnx" in served
