"""Load on the demo's REST API: N concurrent gradio_client clients, each sending M requests, on loopback.

    python bench/app_load.py --model outputs/model                 # starts app.py on a free port
    python bench/app_load.py --url http://127.0.0.1:7860/ --clients 16 --requests 8

Each client is a thread with its own ``gradio_client.Client`` (its own session, as separate users have),
sending the bundled TrashNet sample photos in turn to ``/classify`` (or ``/classify_batch``). The app runs
in its own process (``python app.py``), so the clients never compete with it for the GIL, only for the CPU.
Prints requests/s, p50 and p99 latency (request sent to answer received, queueing included) and the error
count. Goal: 0 errors at 16 clients and p99 at most 4x p50.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = sorted((ROOT / "trashnet_hf" / "sample").glob("*/*.jpg"))


def start_app(
    model: str | None, concurrency: int, threads: int | None, log: Path
) -> tuple[subprocess.Popen, str]:
    """``python app.py`` on a free loopback port; returns the process and its URL once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--concurrency", str(concurrency), *(["--model", model] if model else [])]
    cmd += ["--threads", str(threads)] if threads else []
    env = {**os.environ, "FEEDBACK_DIR": str(log.parent / "feedback"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"app.py exited with {proc.returncode}; its log:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "gradio_api/info", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(1)
    proc.terminate()
    sys.exit(f"app.py did not answer at {url} within 300 s; log in {log}")


def client_loop(url: str, endpoint: str, requests: int, offset: int, out: list, errors: list) -> None:
    client = Client(url, verbose=False)
    for k in range(requests):
        photo = SAMPLE[(offset + k) % len(SAMPLE)]
        payload = handle_file(str(photo)) if endpoint == "/classify" else [handle_file(str(photo))]
        start = time.perf_counter()
        try:
            client.predict(payload, api_name=endpoint)
        except Exception as err:  # any failure counts as an error, whatever raised it
            errors.append(f"{type(err).__name__}: {err}")
            continue
        out.append(time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="A running app to load; default: start app.py on a free port.")
    parser.add_argument("--model", help="With no --url: app.py's --model (default: its own lookup).")
    parser.add_argument("--concurrency", type=int, default=2, help="With no --url: app.py's --concurrency.")
    parser.add_argument("--threads", type=int, help="With no --url: app.py's --threads (default: its own).")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients (threads).")
    parser.add_argument("--requests", type=int, default=8, help="Requests per client.")
    parser.add_argument("--endpoint", default="/classify", choices=["/classify", "/classify_batch"])
    args = parser.parse_args()

    proc = None
    url = args.url
    if url is None:
        log = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-app-load" / "app.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        proc, url = start_app(args.model, args.concurrency, args.threads, log)
    try:
        Client(url, verbose=False).predict(handle_file(str(SAMPLE[0])), api_name="/classify")  # warm-up
        latencies: list[float] = []
        errors: list[str] = []
        threads = [
            threading.Thread(
                target=client_loop, args=(url, args.endpoint, args.requests, i * 7, latencies, errors)
            )
            for i in range(args.clients)
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(f"{args.clients} clients x {args.requests} requests to {args.endpoint} ({os.cpu_count()} CPUs)")
    print(f"requests/s  {len(latencies) / wall:.2f}   ({len(latencies)} answered in {wall:.1f} s)")
    print(f"latency     p50 {p50 * 1000:.0f} ms   p99 {p99 * 1000:.0f} ms   p99/p50 {p99 / p50:.2f}")
    print(f"errors      {len(errors)}" + (f"   e.g. {errors[0]}" if errors else ""))


if __name__ == "__main__":
    main()
