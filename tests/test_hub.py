"""hub.py: cached files are used without the network; a missing file fails fast with a clear message."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants

from tests.conftest import fake_cache
from trashnet_hf.hub import client as hub

HINT = "Pass --data-dir with a local copy."


@pytest.fixture
def silent_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Online mode, and the endpoint accepts connections but never answers (a dropped-packet network)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 0.5)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel completes the handshake; nothing ever reads or replies
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        yield


def _timed_failure(call) -> tuple[hub.HubUnavailableError, float]:
    start = time.monotonic()
    with pytest.raises(hub.HubUnavailableError) as info:
        call()
    return info.value, time.monotonic() - start


@pytest.mark.usefixtures("offline")
def test_dataset_download_offline_fails_fast_with_hint(tmp_path: Path) -> None:
    err, seconds = _timed_failure(
        lambda: hub.download_dataset_files("org/data", ["data.zip"], cache_dir=str(tmp_path), hint=HINT)
    )
    assert seconds < 5
    message = str(err)
    assert "data.zip" in message and "org/data" in message
    assert "HF_HUB_OFFLINE" in message
    assert str(tmp_path) in message
    assert message.endswith(HINT)


@pytest.mark.usefixtures("unreachable")
def test_dataset_download_unreachable_fails_fast(tmp_path: Path) -> None:
    err, seconds = _timed_failure(
        lambda: hub.download_dataset_files("org/data", ["a.zip"], cache_dir=str(tmp_path), hint=HINT)
    )
    # huggingface_hub alone retries five times with backoff here (about 25 s).
    assert seconds < 5
    assert "cannot reach" in str(err) and "ConnectError" in str(err)
    assert HINT in str(err)
    # No chained socket/httpx traceback: the message alone says what happened.
    assert err.__cause__ is None and err.__context__ is None


@pytest.mark.usefixtures("silent_hub")
def test_silent_hub_fails_after_probe_timeout(tmp_path: Path) -> None:
    err, seconds = _timed_failure(lambda: hub.download_model("org/model", cache_dir=str(tmp_path)))
    assert seconds < 3
    assert "Timeout" in str(err)


@pytest.mark.usefixtures("unreachable")
def test_cached_dataset_files_are_used_without_network(tmp_path: Path) -> None:
    snapshot = fake_cache(tmp_path, "dataset", "org/data", {"b.csv": b"b", "a.zip": b"a"})
    paths = hub.download_dataset_files("org/data", ["a.zip", "b.csv"], cache_dir=str(tmp_path))
    assert paths == [snapshot / "a.zip", snapshot / "b.csv"]
    assert [p.read_bytes() for p in paths] == [b"a", b"b"]


@pytest.mark.usefixtures("offline")
def test_one_missing_dataset_file_is_reported(tmp_path: Path) -> None:
    fake_cache(tmp_path, "dataset", "org/data", {"a.zip": b"a"})
    err, _ = _timed_failure(
        lambda: hub.download_dataset_files("org/data", ["a.zip", "b.csv"], cache_dir=str(tmp_path))
    )
    assert "b.csv" in str(err) and "a.zip" not in str(err)


@pytest.mark.usefixtures("offline")
def test_cached_model_is_used_offline(tmp_path: Path) -> None:
    snapshot = fake_cache(tmp_path, "model", "org/model", {"config.json": b"{}", "model.safetensors": b"x"})
    assert hub.download_model("org/model", cache_dir=str(tmp_path)) == snapshot


@pytest.mark.usefixtures("offline")
def test_model_snapshot_without_weights_is_not_a_cache_hit(tmp_path: Path) -> None:
    fake_cache(tmp_path, "model", "org/model", {"config.json": b"{}"})
    err, _ = _timed_failure(lambda: hub.download_model("org/model", cache_dir=str(tmp_path), hint="Use X."))
    assert "model 'org/model'" in str(err) and str(err).endswith("Use X.")


def test_offline_mode_reads_the_environment_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub.offline_mode()
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert hub.offline_mode()
