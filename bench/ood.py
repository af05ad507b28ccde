"""Out-of-distribution scores from the model's own features: how well each flags photos that are not waste.

    python bench/ood.py [--run /work/runs/compare/fast/seed42] [--cache tmp/ood] [--flag-rate 0.05]

The classifier always answers one of six materials, also for a cat or the moon. This measures candidate
scores that say "this is not a TrashNet photo", computed from one trained run (``--run``: its ``model/``
and its ``split_manifest.csv``):

- in-distribution: the run's own train / val / test photos (the manifest's splits);
- foreign: the images bundled in the scikit-image wheel (``skimage/data``: .png/.jpg/.jpeg, and .gif/.tif
  that Pillow reads), leaving out those under 32 px a side; read in place, never copied.

Every image is decoded and preprocessed as the product does (``open_image``, then
``Classifier.preprocess``); the model gives the penultimate features (timm's ``forward_head(...,
pre_logits=True)``, checked to reproduce the logits through the head) and the logits (calibrated: the
temperature is folded into the saved head). Features and logits are cached in an .npz under ``--cache``.

Candidates (higher = more foreign), each fitted on the train split only:

- kNN (Sun et al. 2022): 1 - the k-th largest cosine similarity of the L2-normalised feature to the
  train bank; ``kNN-mean``: 1 - the mean of the k largest;
- Mahalanobis: the smallest distance to a class mean under the shared (pooled within-class) covariance
  (pseudo-inverse), on all the features and after a PCA (fitted on train) to --pca dimensions; on the raw
  features (``Mahal``) and on the L2-normalised ones (``Mahal-norm``);
- energy: -logsumexp(logits); MSP: 1 - max softmax (baselines).

Each threshold is the (1 - --flag-rate) quantile of the validation scores (5%: 1 in 20 real validation
photos flagged). Prints per candidate: validation flagged %, TrashNet test flagged % (false alarms),
foreign flagged (n/N), the AUROC of test (negative) against foreign (positive), and the test photos
flagged by the threshold that would flag 90% of the foreign set (the cost of the bar). Then, for the shown
candidate (--show, default the best AUROC among those meeting the bar: at most 6% of test and at least
90% of foreign flagged), every foreign image with its score and flag, what it must store, and whether a
float16 bank, a class-balanced subsample of it, or a PCA keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_RUN = Path("/work/runs/compare/fast/seed42")
FOREIGN_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff"}
MIN_SIDE = 32
TEST_BAR, FOREIGN_BAR = 0.06, 0.90  # the bar: <= 6% of test photos, >= 90% of foreign ones


def foreign_files() -> tuple[list[Path], list[str]]:
    """scikit-image's bundled images that Pillow reads and that are at least MIN_SIDE px a side; and
    one line per file left out, with the reason."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    keep, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in FOREIGN_SUFFIXES:
            continue
        try:
            with Image.open(path) as im:
                size = im.size
        except OSError as err:
            skipped.append(f"{path.name}: Pillow cannot read it ({err})")
            continue
        if min(size) < MIN_SIDE:
            skipped.append(f"{path.name}: {size[0]}x{size[1]}, under {MIN_SIDE} px a side")
            continue
        keep.append(path)
    return keep, skipped


# A second foreign set, never used to choose anything: sample photos that other installed packages ship.
OTHER_FOREIGN = {
    "matplotlib": ["mpl-data/sample_data/grace_hopper.jpg", "mpl-data/sample_data/logo2.png"],
    "sklearn": ["datasets/images/flower.jpg", "datasets/images/china.jpg"],
    "gradio": [f"media_assets/images/{n}" for n in ("cheetah1.jpg", "groot.jpeg", "hf-logo_transpng.png",
                                                     "tower.jpg")],
}  # fmt: skip


def other_files() -> list[Path]:
    """OTHER_FOREIGN's files that this environment has."""
    import importlib

    found = []
    for package, names in OTHER_FOREIGN.items():
        try:
            root = Path(importlib.import_module(package).__file__).parent
        except ImportError:
            continue
        found += [root / n for n in names if (root / n).is_file()]
    return found


def extract(model_dir: Path, paths: list[Path], batch_size: int) -> dict[str, np.ndarray]:
    """Of image files, float32: the penultimate features ``feats`` (N, D), the logits (N, classes), every
    timm feature stage averaged over the image (``stage<i>``, N x its channels), and, when the model
    carries a saved OOD scorer, its scores ``saved`` (N,) as the product computes them."""
    import torch

    from trashnet_hf.core import ood
    from trashnet_hf.core.model import load_model
    from trashnet_hf.serving.classifier import Classifier, open_image

    model = load_model(model_dir).eval()
    classifier, scorer = Classifier.from_model(model, "cpu"), ood.scorer_of(model)
    timm_model = model.timm_model
    stages = list(range(len(timm_model.feature_info)))
    out: dict[str, list] = {"feats": [], "logits": [], **{f"stage{i}": [] for i in stages}, "saved": []}
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(paths), batch_size):
            x = torch.from_numpy(
                np.stack([classifier.preprocess(open_image(p)) for p in paths[i : i + batch_size]])
            )
            final, inter = timm_model.forward_intermediates(x, indices=stages, norm=False)
            f = timm_model.forward_head(final, pre_logits=True)
            z = timm_model.get_classifier()(f)
            if i == 0:  # the features are the ones the logits come from
                gap = (z - model(pixel_values=x).logits).abs().max().item()
                print(f"  head(features) vs model logits: max |diff| {gap:.2e}")
                assert gap < 1e-4, gap
            out["feats"].append(f.float().numpy())
            out["logits"].append(z.float().numpy())
            for j, t in zip(stages, inter, strict=True):
                out[f"stage{j}"].append(t.float().mean(dim=(2, 3)).numpy())
            if scorer is not None:
                out["saved"].append(scorer(inter[ood.ood_stage(timm_model)].mean(dim=(2, 3))).numpy())
            done = min(i + batch_size, len(paths))
            print(f"  {done}/{len(paths)} images, {time.perf_counter() - start:.0f} s", end="\r", flush=True)
    print()
    return {k: np.concatenate(v) for k, v in out.items() if v}


def load_features(run: Path, cache: Path, batch_size: int) -> dict[str, np.ndarray]:
    """Features, logits, split and name of every manifest photo and foreign image, from the cache when it
    holds the same files for the same model."""
    from trashnet_hf.core.manifest import read_manifest

    rows = [r for r in read_manifest(run / "split_manifest.csv") if r["split"] in {"train", "val", "test"}]
    foreign, skipped = foreign_files()
    for line in skipped:
        print(f"foreign set leaves out {line}")
    other = other_files()
    paths = [Path(r["path"]) for r in rows] + foreign + other
    splits = np.array([r["split"] for r in rows] + ["foreign"] * len(foreign) + ["other"] * len(other))
    labels = np.array([r["label"] for r in rows] + [""] * (len(foreign) + len(other)))
    names = np.array([str(p) for p in paths])
    weights, saved = run / "model" / "model.safetensors", run / "model" / "ood.safetensors"
    times = (str(f.stat().st_mtime_ns if f.exists() else 0) for f in (weights, saved))
    stamp = " ".join([str(run.resolve()), *times])
    cache.mkdir(parents=True, exist_ok=True)
    file = cache / f"ood_{run.resolve().as_posix().strip('/').replace('/', '_')}.npz"
    if file.exists():
        data = np.load(file)
        if str(data["stamp"]) == stamp and np.array_equal(data["names"], names):
            print(f"features from {file}")
            return dict(data)
    print(f"extracting features of {len(paths)} images with {run / 'model'} (cached in {file})")
    data = {**extract(run / "model", paths, batch_size), "splits": splits, "labels": labels, "names": names}
    np.savez(file, stamp=np.array(stamp), **data)
    return data


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def knn_scorer(bank: np.ndarray, k: int, mean: bool = False):
    """1 - (the k-th largest | the mean of the k largest) cosine similarity to a normalised bank."""

    def score(x: np.ndarray) -> np.ndarray:
        sims = normalise(x) @ bank.astype(np.float32).T
        top = -np.sort(-sims, axis=1)[:, :k]
        return 1 - (top.mean(axis=1) if mean else top[:, k - 1])

    return score


def mahalanobis_scorer(train: np.ndarray, labels: np.ndarray, dims: int | None):
    """The smallest Mahalanobis distance to a class mean under the pooled within-class covariance;
    with dims, in a PCA of the train features to that many dimensions."""
    from sklearn.decomposition import PCA

    pca = PCA(dims, random_state=0).fit(train) if dims else None
    z = pca.transform(train) if pca else train
    classes = sorted(set(labels))
    means = np.stack([z[labels == c].mean(axis=0) for c in classes])
    centred = z - means[[classes.index(c) for c in labels]]
    precision = np.linalg.pinv(centred.T @ centred / (len(z) - len(classes)), hermitian=True)

    def score(x: np.ndarray) -> np.ndarray:
        d = (pca.transform(x) if pca else x)[:, None, :] - means[None]
        return np.sqrt(np.einsum("ncd,de,nce->nc", d, precision, d, optimize=True).min(axis=1))

    return score


def energy(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))


def msp(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return 1 - (z / z.sum(axis=1, keepdims=True)).max(axis=1)


def evaluate(scores: dict[str, np.ndarray], flag_rate: float, threshold: float | None = None) -> dict:
    """Threshold at the validation quantile (or ``threshold``); flagged fractions and the test-vs-foreign
    AUROC."""
    from sklearn.metrics import roc_auc_score

    if threshold is None:
        threshold = float(np.quantile(scores["val"], 1 - flag_rate))
    flagged = {s: scores[s] > threshold for s in ("val", "test", "foreign", "other") if s in scores}
    y = np.r_[np.zeros(len(scores["test"])), np.ones(len(scores["foreign"]))]
    auroc = roc_auc_score(y, np.r_[scores["test"], scores["foreign"]])
    rates = {s: float(f.mean()) for s, f in flagged.items()}
    meets = rates["test"] <= TEST_BAR and rates["foreign"] >= FOREIGN_BAR
    # The other way round: the threshold that flags FOREIGN_BAR of the foreign set, and what it costs on test.
    at_bar = np.sort(scores["foreign"])[::-1][int(np.ceil(FOREIGN_BAR * len(scores["foreign"]))) - 1]
    return {
        "threshold": threshold,
        "flagged": flagged,
        "rates": rates,
        "auroc": auroc,
        "meets": meets,
        "test_at_bar": float((scores["test"] >= at_bar).mean()),
    }


def row(name: str, r: dict) -> str:
    f, o = r["flagged"]["foreign"], r["flagged"].get("other", np.zeros(0, bool))
    foreign = f"{100 * r['rates']['foreign']:.1f} ({f.sum()}/{len(f)})"
    return (
        f"| {name:<30} | {100 * r['rates']['val']:5.1f} | {100 * r['rates']['test']:6.1f} "
        f"| {foreign:>15} | {f'{o.sum()}/{len(o)}':>7} | {r['auroc']:.3f} "
        f"| {100 * r['test_at_bar']:13.1f} | {'yes' if r['meets'] else 'no':<5} |"
    )


HEADER = (
    "| candidate                      | val % | test % | foreign % (n/N) |   other | AUROC "
    "| test % at 90% | meets |\n"
    "|--------------------------------|------:|-------:|----------------:|--------:|------:|--------------:|-------|"
)


SAVED = "the model's own (saved)"


def stage_candidates(data: dict, part: dict, run: Path) -> dict[str, dict[str, np.ndarray]]:
    """Mahalanobis to the nearest class mean (shared covariance, ``core.ood.fit_scorer``: the product's
    own fit) on every timm feature stage averaged over the image, fitted on train."""
    import timm
    import torch

    from trashnet_hf.core import ood

    config = json.loads((run / "model" / "config.json").read_text())
    info = timm.create_model(config["architecture"], pretrained=False).feature_info
    out = {}
    for i, stage in enumerate(info):
        x = data[f"stage{i}"]
        scorer = ood.fit_scorer(x[part["train"]], data["labels"][part["train"]], stage["module"])
        with torch.inference_mode():
            scores = {s: scorer(torch.from_numpy(x[m])).numpy() for s, m in part.items() if s != "train"}
        out[f"Mahal stage {stage['module']} /{stage['reduction']}"] = scores
    return out


def balanced_subsample(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of the same fraction of every class (at least one each)."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in sorted(set(labels)):
        idx = np.flatnonzero(labels == c)
        picks.append(rng.choice(idx, max(1, round(fraction * len(idx))), replace=False))
    return np.sort(np.concatenate(picks))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run",
        type=Path,
        default=DEFAULT_RUN,
        help=f"A trained run folder: its model/ and split_manifest.csv (default {DEFAULT_RUN}).",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=ROOT / "tmp" / "ood",
        help="Folder of the features/logits .npz (reused when it holds the same files; default tmp/ood).",
    )
    parser.add_argument(
        "--flag-rate",
        type=float,
        default=0.05,
        help="Fraction of validation photos flagged: each threshold is that upper quantile (default 0.05).",
    )
    parser.add_argument(
        "--k", type=int, nargs="+", default=[1, 5, 10, 20, 50], help="Neighbour counts of the kNN scores."
    )
    parser.add_argument(
        "--pca",
        type=int,
        nargs="*",
        default=[32, 64, 256],
        help="PCA dimensions for Mahalanobis, besides all the features (default 32 64 256).",
    )
    parser.add_argument(
        "--show",
        default=None,
        help="The candidate whose foreign scores and storage are detailed, as named in the table "
        "(e.g. 'kNN k=10'); default the best AUROC among those meeting the bar.",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="Images per forward pass (default 32).")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)."
    )
    args = parser.parse_args()
    if not 0 < args.flag_rate < 1:
        parser.error("--flag-rate must be between 0 and 1")
    if not (args.run / "model").is_dir() or not (args.run / "split_manifest.csv").is_file():
        parser.error(f"--run {args.run}: needs model/ and split_manifest.csv")
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    data = load_features(args.run, args.cache, args.batch_size)
    feats, logits, splits = data["feats"], data["logits"], data["splits"]
    part = {s: splits == s for s in ("train", "val", "test", "foreign", "other")}
    train, train_labels = feats[part["train"]], data["labels"][part["train"]]
    bank = normalise(train).astype(np.float16)
    n, d = feats.shape[0], feats.shape[1]
    print(
        f"{part['train'].sum()} train, {part['val'].sum()} val, {part['test'].sum()} test photos, "
        f"{part['foreign'].sum()} foreign images (+ {part['other'].sum()} from other packages); "
        f"features {d}-d ({n} in all)"
    )

    def on_splits(fn) -> dict[str, np.ndarray]:
        return {s: fn(feats[m], logits[m]) for s, m in part.items() if s != "train"}

    candidates: dict[str, dict[str, np.ndarray]] = {}
    for k in args.k:
        candidates[f"kNN k={k}"] = on_splits(lambda f, z, k=k: knn_scorer(bank, k)(f))
    for k in args.k:
        if k > 1:
            candidates[f"kNN-mean k={k}"] = on_splits(lambda f, z, k=k: knn_scorer(bank, k, True)(f))
    for norm in (False, True):  # on the raw features, and on the L2-normalised ones the kNN uses
        prep = normalise if norm else (lambda x: x)
        for dims in [None, *args.pca]:
            scorer = mahalanobis_scorer(prep(train), train_labels, dims)
            name = f"Mahal{'-norm' if norm else ''} {f'PCA {dims}' if dims else f'all {d}'}"
            candidates[name] = on_splits(lambda f, z, s=scorer, p=prep: s(p(f)))
    candidates.update(stage_candidates(data, part, args.run))
    candidates["energy"] = on_splits(lambda f, z: energy(z))
    candidates["MSP"] = on_splits(lambda f, z: msp(z))

    results = {name: evaluate(s, args.flag_rate) for name, s in candidates.items()}
    if "saved" in data:  # what the product serves: the model's own scorer and threshold, nothing refitted
        saved = {s: data["saved"][m] for s, m in part.items() if s != "train"}
        threshold = json.loads((args.run / "model" / "config.json").read_text())["ood_threshold"]
        candidates[SAVED] = saved
        results[SAVED] = evaluate(saved, args.flag_rate, threshold)
    print(
        f"\nThreshold: each score's {100 * (1 - args.flag_rate):g}th percentile on val; bar: test <= "
        f"{100 * TEST_BAR:g}%, foreign >= {100 * FOREIGN_BAR:g}%. AUROC: test (negative) vs foreign.\n"
    )
    print(HEADER)
    for name, r in results.items():
        print(row(name, r))

    meeting = [n for n, r in results.items() if r["meets"]]
    show = args.show or max(meeting or results, key=lambda n: results[n]["auroc"])
    if show not in results:
        parser.error(f"--show {show!r}: not a candidate ({', '.join(results)})")
    r, s = results[show], candidates[show]
    print(f"\n{show}: threshold {r['threshold']:.4f}; the foreign images, highest score first:")
    names = data["names"][part["foreign"]]
    for i in np.argsort(-s["foreign"]):
        flag = "flagged" if r["flagged"]["foreign"][i] else "PASSES"
        print(f"  {Path(names[i]).name:<30} {s['foreign'][i]:.4f}  {flag}")
    test_s = s["test"]
    print(f"  (TrashNet test: median {np.median(test_s):.4f}, max {test_s.max():.4f})")

    if show.startswith("kNN"):
        k = int(show.split("k=")[1])
        mean = show.startswith("kNN-mean")
        mb = bank.nbytes / 1e6
        print(f"\nStorage: a bank of {len(bank)} x {d} float16 = {mb:.2f} MB (float32: {2 * mb:.2f} MB).")
        print("Smaller banks (threshold refitted on val each time):")
        print(HEADER)
        variants = {f"{show} float32 bank": knn_scorer(normalise(train), k, mean)}
        for fraction in (0.5, 0.25, 0.1):
            idx = balanced_subsample(train_labels, fraction)
            sub = bank[idx]
            kk = max(1, round(k * fraction)) if k > 1 else 1
            variants[f"{len(idx)} bank, k={k}"] = knn_scorer(sub, min(k, len(idx)), mean)
            if kk != k:
                variants[f"{len(idx)} bank, k={kk}"] = knn_scorer(sub, kk, mean)
        from sklearn.decomposition import PCA

        for dims in (128, 64, 32):
            pca = PCA(dims, random_state=0).fit(normalise(train))
            pbank = normalise(pca.transform(normalise(train))).astype(np.float16)
            variants[f"PCA {dims} bank"] = lambda f, p=pca, b=pbank: knn_scorer(b, k, mean)(
                p.transform(normalise(f))
            )
        for name, scorer in variants.items():
            v = evaluate({sp: scorer(feats[part[sp]]) for sp in ("val", "test", "foreign")}, args.flag_rate)
            print(row(name, v))
        print(
            f"(sizes, float16: subsample of m photos = m x {d} x 2 bytes; PCA q = {len(bank)} x q x 2 "
            f"bytes + the {d} x q projection)"
        )
    elif show.startswith("Mahal stage") or show == SAVED:
        k = len(set(data["labels"][part["train"]]))
        widths = [data[key].shape[1] for key in sorted(key for key in data if key.startswith("stage"))]
        sizes = "; ".join(f"{c} channels: {4 * (k * c + c * c) / 1e3:.0f} KB" for c in widths)
        print(f"\nStorage: {k} class means and a C x C whitening matrix, float32; by stage: {sizes}.")
        if (saved := args.run / "model" / "ood.safetensors").is_file():
            print(f"The model's own {saved.name}: {saved.stat().st_size / 1e3:.0f} KB.")
    elif show.startswith("Mahal"):
        dims = d if "all" in show else int(show.split()[-1])
        print(
            f"\nStorage: 6 class means and a {dims} x {dims} precision"
            + (f", plus the {d} x {dims} PCA projection" if dims != d else "")
            + f", float32: {4 * (6 * dims + dims * dims + (d * dims if dims != d else 0)) / 1e6:.2f} MB."
        )
    else:
        print("\nStorage: nothing beyond the logits.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
