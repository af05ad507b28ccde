"""Accuracy of documented configurations on real TrashNet, on one split, the way a user runs them.

    python bench/accuracy.py --config fast --output-dir runs/fast              # one configuration
    python bench/accuracy.py --config best --seeds 3 --output-dir runs/best    # seeds 42, 43, 44
    python bench/accuracy.py --compare --output-dir runs/compare               # the four below
    python bench/accuracy.py --config fast --output-dir DIR -- --ema-decay 0.98  # after --: train.py flags
    python bench/accuracy.py --config best --output-dir DIR -- --image-size 192 --epochs 8  # a candidate

Each run is ``python train.py`` in a subprocess (its wall time is end to end: start-up, data preparation,
training, calibration, evaluation), leaving its outputs (``results.json``, ``split_manifest.csv``,
``model/``, ...) under ``DIR/<config>/seed<N>/``. The first run makes the split (near-duplicates grouped
by the reference embedder, whatever the model); every later run reuses it through ``--split-manifest``,
so configurations and seeds are compared on the same test photos. ``--split-manifest FILE`` fixes it for
all. After each run, ``pipeline()`` classifies the original test files and the disagreements with the run's
reported predictions are counted. The table (also ``DIR/summary.md``, ``DIR/summary.json``) gives test
accuracy with its 95% Wilson interval, macro-F1, per-class F1, the best validation macro-F1 (what every
recipe choice was made on; test is for reporting only), wall time and training images/s; with several
seeds, each configuration's mean and standard deviation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "trashnet"


@dataclass(frozen=True)
class Config:
    about: str
    flags: tuple[str, ...]  # train.py flags; --data-dir, --seed, --output-dir and the split come from here


LITE0 = ("--model-name", "pypi:tf_efficientnet_lite0")
FAST = (*LITE0, "--image-size", "160", "--epochs", "6")
CONFIGS = {
    "fast": Config("Lite0 ImageNet, 160 px, 6 epochs (at most 10 min here, cold)", FAST),
    "best": Config(
        "Lite2 ImageNet, 260 px (its native size), 5 epochs (26-33 min here)",
        ("--model-name", "pypi:tf_efficientnet_lite2", "--image-size", "260", "--epochs", "5"),
    ),
    "lite0-scratch": Config(
        "Lite0 architecture, random init, fast's budget", (*FAST, "--pretrained", "false")
    ),
    "resnet18-scratch": Config(
        "ResNet-18, random init, fast's budget",
        ("--model-name", "resnet18", "--pretrained", "false", "--image-size", "160", "--epochs", "6"),
    ),
}
# fast first: under --cold it makes the split itself, embeddings and all, so its wall time is the whole job.
COMPARISON = ("fast", "lite0-scratch", "best", "resnet18-scratch")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        choices=CONFIGS,
        action="append",
        help="A configuration to run (repeatable): "
        + "; ".join(f"{name}: {c.about}" for name, c in CONFIGS.items()),
    )
    parser.add_argument("--compare", action="store_true", help=f"Run {', '.join(COMPARISON)} on one split.")
    parser.add_argument(
        "--seeds", type=int, default=1, help="Training seeds per configuration (42, 43, ...)."
    )
    parser.add_argument("--first-seed", type=int, default=42, help="The first of the --seeds seeds.")
    parser.add_argument("--output-dir", type=Path, required=True, help="Where the runs and the table go.")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="TrashNet class folders.")
    parser.add_argument("--split-manifest", type=Path, help="Reuse this split (default: the first run's).")
    parser.add_argument("--cold", action="store_true", help="Each run on an empty --cache-dir and HF_HOME.")
    parser.add_argument("train_flags", nargs="*", help="Further train.py flags for every run, after --.")
    args = parser.parse_args()
    args.configs = list(COMPARISON) if args.compare else args.config or []
    if not args.configs:
        parser.error("pass --config NAME (one of: " + ", ".join(CONFIGS) + ") or --compare")
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir} does not exist; point it at the TrashNet class folders.")
    if args.split_manifest is not None and not args.split_manifest.is_file():
        parser.error(f"--split-manifest {args.split_manifest} is not a file")
    # The pipeline() check imports the package after each training run: a stale install would fail only
    # then, after up to 30 minutes of training, so it is checked before any.
    if importlib.util.find_spec("trashnet_hf") is None:
        parser.error(f"trashnet_hf does not import in {sys.executable}; run `pip install -e {ROOT}` first.")
    return args


def run_train(args: argparse.Namespace, name: str, seed: int, manifest: Path | None) -> tuple[Path, float]:
    """One train.py run in a subprocess; its output folder and end-to-end wall time."""
    out = args.output_dir / name / f"seed{seed}"
    cache = out.parent / "cold-cache" / f"seed{seed}" if args.cold else args.output_dir / "cache"
    flags = [*CONFIGS[name].flags, "--data-dir", str(args.data_dir), "--seed", str(seed)]
    flags += ["--output-dir", str(out), "--cache-dir", str(cache), "--report-to", "none", *args.train_flags]
    flags += ["--split-manifest", str(manifest)] if manifest is not None else []
    env = {**os.environ, **({"HF_HOME": str(cache / "hf_home")} if args.cold else {})}
    logging.info("%s seed %d: train.py %s", name, seed, " ".join(flags))
    started = time.perf_counter()
    log = out.parent / f"seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        code = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *flags], stdout=f, stderr=f, env=env
        ).returncode
    if code != 0:
        sys.exit(f"{name} seed {seed}: train.py exited {code}; see {log}")
    return out, time.perf_counter() - started


RETIRED_FLAGS = {"ood_k"}


def pipeline_disagreements(out: Path) -> int:
    """How many of the run's test files ``pipeline()`` classifies otherwise than the run reported."""
    from trashnet_hf.core.config import TrainConfig
    from trashnet_hf.core.model import load_model, preprocessing_of
    from trashnet_hf.data import prepare_data, read_manifest_split
    from trashnet_hf.training.evaluation import serving_agreement

    flags = json.loads((out / "results.json").read_text())["config"]  # the run's own flags
    # ood_k went with the kNN OOD score; it never touched the data, so a run recorded with it still reads.
    cfg = TrainConfig(**{k: v for k, v in flags.items() if k not in RETIRED_FLAGS})
    pre = preprocessing_of(load_model(out / "model"))
    rows = read_manifest_split(prepare_data(cfg, pre), out / "split_manifest.csv", "test")
    differ = serving_agreement(out / "model", rows)["disagreements"]
    for d in differ:
        logging.info(
            "  %s: ours %s (margin %.4f), pipeline %s", d["path"], d["ours"], d["our_margin"], d["pipeline"]
        )
    return len(differ)


def row_of(name: str, seed: int, out: Path, wall: float) -> dict:
    results = json.loads((out / "results.json").read_text())
    test = results["metrics"]["test"]
    return {
        "config": name,
        "seed": seed,
        "accuracy": test["accuracy"],
        "ci95": test["accuracy_ci95"],
        "images": sum(v["support"] for v in test["per_class"].values()),
        "macro_f1": test["macro_f1"],
        "f1": {c: v["f1"] for c, v in test["per_class"].items()},
        "best_val_macro_f1": max(r["val_macro_f1"] for r in results["history"]),
        "best_epoch": results["best_epoch"],
        "wall_s": wall,
        "train_images_per_s": results["train_images_per_s"],
        "pipeline_disagreements": pipeline_disagreements(out),
    }


def table(rows: list[dict]) -> str:
    """Markdown: one line per run, then each configuration's mean and standard deviation over seeds."""
    classes = list(rows[0]["f1"])
    head = ["config", "seed", "test accuracy (95% Wilson)", "macro-F1", *(f"F1 {c}" for c in classes)]
    head += ["best val macro-F1", "wall", "train img/s", "pipeline() differs"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        correct, (low, high) = round(r["accuracy"] * r["images"]), r["ci95"]
        cells = [
            r["config"],
            str(r["seed"]),
            f"{r['accuracy']:.1%} ({correct}/{r['images']}, {low:.1%}-{high:.1%})",
        ]
        cells += [f"{r['macro_f1']:.3f}", *(f"{r['f1'][c]:.3f}" for c in classes)]
        cells += [f"{r['best_val_macro_f1']:.3f} (ep {r['best_epoch']})", f"{r['wall_s']:.0f} s"]
        lines.append(
            "| "
            + " | ".join([*cells, f"{r['train_images_per_s']:.1f}", str(r["pipeline_disagreements"])])
            + " |"
        )
    for name in dict.fromkeys(r["config"] for r in rows):
        runs = [r for r in rows if r["config"] == name]
        if len(runs) > 1:
            lines.append("| " + " | ".join(mean_cells(name, runs, classes)) + " |")
    return "\n".join(lines)


def mean_cells(name: str, runs: list[dict], classes: list[str]) -> list[str]:
    def ms(values: list[float], fmt: str) -> str:
        return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"

    cells = [f"**{name}, mean**", f"{len(runs)} seeds", ms([r["accuracy"] for r in runs], ".1%")]
    cells += [
        ms([r["macro_f1"] for r in runs], ".3f"),
        *(ms([r["f1"][c] for r in runs], ".3f") for c in classes),
    ]
    cells += [
        ms([r["best_val_macro_f1"] for r in runs], ".3f"),
        f"{statistics.mean(r['wall_s'] for r in runs):.0f} s",
    ]
    return [
        *cells,
        f"{statistics.mean(r['train_images_per_s'] for r in runs):.1f}",
        str(sum(r["pipeline_disagreements"] for r in runs)),
    ]


def main() -> None:
    args = parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest, rows = args.split_manifest, []
    for name in args.configs:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            out, wall = run_train(args, name, seed, manifest)
            manifest = manifest or out / "split_manifest.csv"  # every later run reuses the first split
            rows.append(row_of(name, seed, out, wall))
            logging.info("%s seed %d: test accuracy %.4f in %.0f s", name, seed, rows[-1]["accuracy"], wall)
    header = f"split: {manifest}\n" + "".join(
        f"{n}: train.py {' '.join(CONFIGS[n].flags)}\n" for n in args.configs
    )
    header += f"and for every run: {' '.join(args.train_flags)}\n" if args.train_flags else ""
    text = f"{header}\n{table(rows)}\n"
    (args.output_dir / "summary.md").write_text(text)
    (args.output_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
