"""What the Gradio Space installs and how fast it starts: the old PyTorch requirements against ONNX Runtime.

    python bench/space_install.py --work-dir /tmp/space-install
    python bench/space_install.py --model-dir outputs/lite0/model --reuse   # keep venvs already built

Builds the Space folder with the publish dry-run (``--space-only``), exports the model to ONNX, and makes
two fresh venvs under --work-dir (``python -m venv``; ``pip install``):

* before: the Space's old requirements, pinned as in requirements.txt (torch, torchvision, transformers,
  timm, huggingface_hub, httpx2, safetensors, pillow, numpy, scipy) plus gradio, serving the PyTorch
  model folder. torch and torchvision, and the CUDA libraries torch's Linux wheel requires, install from
  the local index (--local-index, this machine's disk), never downloaded; cuda-bindings, which is not on
  this disk, is left out (a few MB; torch imports without it).
* after: the Space's requirements now (``publish.SPACE_PACKAGES``) plus gradio, serving the .onnx file.

For each: the installed size of the venv's site-packages (MB, 10^6 bytes), and the cold start, from
spawning ``python app.py`` in the Space folder to the first answer of ``/classify`` through gradio_client
(seconds; --starts times, the first right after the install). Prints a table and the ratios.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: the trashnet_hf next to this file

MODEL_DIRS = (Path("/work/runs/compare/fast/seed42/model"), ROOT / "outputs" / "lite0" / "model")
PHOTO = ROOT / "trashnet_hf" / "sample" / "glass" / "glass1.jpg"
# The Space's requirements before it served ONNX (publish.SPACE_PACKAGES until then), and gradio (the
# Space's SDK). Versions come from requirements.txt.
OLD_SPACE = (
    "torch", "torchvision", "transformers", "timm", "huggingface_hub", "httpx2", "safetensors", "pillow",
    "numpy", "scipy",
)  # fmt: skip
# torch 2.14.1's Linux wheel requires these CUDA libraries (its Requires-Dist); installed from the local
# index with --no-deps, so pip never downloads them.
CUDA_LIBS = (
    "nvidia-cublas", "nvidia-cuda-cupti", "nvidia-cuda-nvrtc", "nvidia-cuda-runtime", "nvidia-cudnn-cu13",
    "nvidia-cufft", "nvidia-cufile", "nvidia-curand", "nvidia-cusolver", "nvidia-cusparse",
    "nvidia-cusparselt-cu13", "nvidia-nccl-cu13", "nvidia-nvjitlink", "nvidia-nvshmem-cu13", "nvidia-nvtx",
    "triton==3.8.0", "cuda-toolkit==13.0.3.0", "cuda-pathfinder",
)  # fmt: skip
# What torch, transformers and timm need besides each other (their Requires-Dist, without CUDA): they
# install --no-deps so that pip's resolver never reaches torch's CUDA requirements.
NO_DEPS = ("transformers", "timm")
THEIR_DEPS = (
    "filelock", "typing-extensions", "setuptools>=77.0.3", "sympy", "networkx", "jinja2", "fsspec", "regex",
    "tokenizers", "pyyaml", "typer", "tqdm", "packaging",
)  # fmt: skip


def pins(names: tuple[str, ...]) -> list[str]:
    """``name==version`` as requirements.txt pins it (the name alone when it pins none)."""
    from trashnet_hf.core.errors import UserError
    from trashnet_hf.hub.publish import _pins

    pinned = []
    for name in names:
        try:
            pinned.extend(f"{n}=={v}" for n, v in _pins((name,)).items())
        except UserError:  # requirements.txt pins no version of it
            pinned.append(name)
    return pinned


def pip(venv: Path, args: list[str], log: Path) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", *args]
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
            sys.exit(f"pip failed; see {log}")


def make_venv(venv: Path, steps: list[list[str]], reuse: bool) -> float:
    """A fresh venv with ``steps`` (pip install argument lists) installed; the seconds it took."""
    if reuse and (venv / "done").is_file():
        return float((venv / "done").read_text())
    shutil.rmtree(venv, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log = venv / "install.log"
    for step in steps:
        pip(venv, step, log)
    seconds = time.perf_counter() - start
    (venv / "done").write_text(f"{seconds:.1f}")
    return seconds


def site_packages_mb(venv: Path) -> float:
    """Bytes of every file under the venv's site-packages (a hard link once), in MB."""
    (site,) = venv.glob("lib/python3*/site-packages")
    seen, total = set(), 0
    for dirpath, _, files in os.walk(site):
        for name in files:
            st = (Path(dirpath) / name).lstat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total / 1e6


def cold_start(venv: Path, space: Path, model: str, log: Path) -> float:
    """Seconds from spawning ``python app.py`` to the first answer of /classify."""
    import httpx
    from gradio_client import Client, handle_file

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        str(venv / "bin" / "python"),
        "app.py",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "FEEDBACK_DIR": str(log.parent / "fb"),
    }
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=space, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"app.py exited with {proc.returncode}; its log:\n{log.read_text()[-3000:]}")
            if time.perf_counter() - start > 600:
                sys.exit(f"app.py did not answer within 600 s; log in {log}")
            try:
                if httpx.get(url + "gradio_api/info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        Client(url, verbose=False).predict(handle_file(str(PHOTO)), api_name="/classify")
        return time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def prepare(work: Path, model_dir: Path) -> tuple[Path, Path]:
    """The Space folder (publish dry-run, --space-only) and the model's ONNX export, under ``work``."""
    from trashnet_hf.hub import publish
    from trashnet_hf.serving import onnx as export_onnx

    onnx_file = work / "model.onnx"
    if not onnx_file.is_file() and export_onnx.main([str(model_dir), "--output", str(onnx_file)]) != 0:
        sys.exit(f"cannot export {model_dir} to ONNX")
    build = work / "build"
    shutil.rmtree(build, ignore_errors=True)
    args = [str(build), "--space-only", "--model-repo", "bench/trashnet", "--space-repo", "bench/demo"]
    if publish.main([*args, "--dry-run"]) != 0:
        sys.exit("the publish dry-run failed")
    return build / "publish" / "space", onnx_file


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/space-install"), help="Venvs and builds.")
    parser.add_argument(
        "--model-dir",
        type=Path,
        help=f"A trained model folder; default: the first of {[str(m) for m in MODEL_DIRS]}.",
    )
    parser.add_argument(
        "--local-index", default="file:///opt/pypi/simple",
        help="Index (pip --index-url) that torch, torchvision and torch's CUDA libraries install from, so "
        "that nothing of them is downloaded; '' for pip's default.",
    )  # fmt: skip
    parser.add_argument(
        "--starts", type=int, default=2, help="Cold starts timed per venv (first: right after install)."
    )
    parser.add_argument("--reuse", action="store_true", help="Keep venvs a previous run completed.")
    args = parser.parse_args()
    model_dir = args.model_dir or next((m for m in MODEL_DIRS if (m / "config.json").is_file()), None)
    if model_dir is None:
        sys.exit("no model folder: pass --model-dir (train.py's OUTPUT_DIR/model)")
    work = args.work_dir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    space, onnx_file = prepare(work, model_dir)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio_client's requests: one line each

    from trashnet_hf.hub.publish import SPACE_PACKAGES

    gradio = pins(("gradio",))
    local = ["--index-url", args.local_index] if args.local_index else []
    before_steps = [
        [*local, "--no-deps", *pins(("torch", "torchvision")), *CUDA_LIBS],
        ["--no-deps", *pins(NO_DEPS)],
        [
            *pins(tuple(n for n in OLD_SPACE if n not in ("torch", "torchvision", *NO_DEPS))),
            *THEIR_DEPS,
            *gradio,
        ],
    ]
    after_steps = [[*pins(SPACE_PACKAGES), *gradio]]
    rows = []
    for name, steps, model in (
        ("before (torch)", before_steps, str(model_dir.absolute())),
        ("after (onnx)", after_steps, str(onnx_file)),
    ):
        venv = work / name.split()[0]
        print(f"{name}: installing into {venv} ...", flush=True)
        seconds = make_venv(venv, steps, args.reuse)
        mb = site_packages_mb(venv)
        starts = [cold_start(venv, space, model, work / f"{venv.name}-app.log") for _ in range(args.starts)]
        rows.append((name, mb, seconds, starts))

    print(f"\nSpace requirements now: {' '.join(pins(SPACE_PACKAGES))} (+ {gradio[0]}, the Space's SDK)")
    print(f"model: {model_dir} ({onnx_file.stat().st_size / 1e6:.1f} MB as ONNX); {os.cpu_count()} CPUs\n")
    print(f"{'venv':16} {'site-packages MB':>17} {'install s':>10} {'cold start s (each)':>26} {'median':>7}")
    for name, mb, seconds, starts in rows:
        each = ", ".join(f"{s:.1f}" for s in starts)
        print(f"{name:16} {mb:17.0f} {seconds:10.0f} {each:>26} {statistics.median(starts):7.1f}")
    (_, mb0, s0, c0), (_, mb1, s1, c1) = rows
    print(
        f"{'before / after':16} {mb0 / mb1:16.1f}x {s0 / s1:9.1f}x {'':>26} "
        f"{statistics.median(c0) / statistics.median(c1):6.1f}x"
    )


if __name__ == "__main__":
    main()
