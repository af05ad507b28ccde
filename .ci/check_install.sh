#!/usr/bin/env bash
# Does a real install work? `pip install .` WITH its dependencies (no --no-deps) into a fresh venv that
# cannot see the system site-packages, pinned to requirements.txt; then, from a directory outside the repo,
# import every trashnet_hf module, run train.py --help and a one-epoch run on the bundled sample. Fails if
# pyproject.toml misses a package the code imports. Run by .ci/run; on its own: .ci/check_install.sh
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/check_install.XXXXXX")"
trap 'rm -rf "$WORK" &' EXIT  # in the background: deleting the 6 GB venv takes a while
VENV="$WORK/venv"
OUT="$WORK/out"

say() { echo "check_install [${SECONDS}s]: $*"; }
fail() {
    echo "check_install: FAILED: $*" >&2
    echo "check_install: a plain 'pip install .' does not give a working train.py; is every package the" \
        "code imports declared in pyproject.toml [project].dependencies?" >&2
    exit 1
}

# Build from a copy of what a clone would hold (tracked files plus new, unignored ones): building in the
# repo itself would leave build/ and *.egg-info there, and a stale build/lib can leak into the wheel.
say "copying the source tree"
mkdir -p "$WORK/src" "$WORK/cwd"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | tar --null --files-from=- --ignore-failed-read -cf -) | tar -xf - -C "$WORK/src" \
    || fail "could not copy the source tree"

say "creating a fresh venv (no system site-packages)"
"$PYTHON" -m venv --without-pip "$VENV" || fail "could not create a venv with $PYTHON"
# The host's pip drives the venv (pip >= 22.3: --python), which spares bootstrapping pip into it.
pip_venv() { PIP_DISABLE_PIP_VERSION_CHECK=1 "$PYTHON" -m pip --python "$VENV/bin/python" "$@"; }

# -c requirements.txt: the exact versions CI tests with (torch from this machine's disk); the pip cache
# stays on (a second run reuses what it downloaded or built). --no-compile: compiling all ~16k files
# costs more than compiling the few thousand that train.py imports, which the first run below does.
# -qq: errors only (this machine's local indexes warn about every package they lack).
say "pip install . -c requirements.txt (with dependencies)"
pip_venv install -qq --no-compile -c "$REPO/requirements.txt" "$WORK/src" \
    || fail "pip install . (with dependencies) failed"
pip_venv check || fail "the installed packages have broken requirements (pip check)"

# -P: train.py's folder is not put on sys.path, so trashnet_hf comes from the venv, not from the repo.
# Bytecode is written (into the throwaway venv) even where PYTHONDONTWRITEBYTECODE is set, so each run
# reuses what the one before compiled.
cd "$WORK/cwd"
run_py() {
    env -u PYTHONDONTWRITEBYTECODE WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_HOME="$WORK/hf_home" \
        "$VENV/bin/python" -P "$@"
}
say "importing every trashnet_hf module"
# Also catches a dependency that only a module train.py never imports needs (the demo app's gradio).
run_py - "$VENV" <<'PY' || fail "a trashnet_hf module does not import in the venv (traceback above)"
import importlib, pkgutil, sys
import trashnet_hf
if not trashnet_hf.__file__.startswith(sys.argv[1] + "/"):
    sys.exit(f"trashnet_hf imported from {trashnet_hf.__file__}, not from the venv")
for info in pkgutil.walk_packages(trashnet_hf.__path__, "trashnet_hf."):
    if not info.name.endswith(".__main__"):  # a __main__ runs its CLI when imported
        importlib.import_module(info.name)
PY

say "train.py --help"
run_py "$REPO/train.py" --help >/dev/null || fail "train.py --help failed in the venv"

say "tiny training run (sample data, 1 epoch, W&B offline)"
run_py "$REPO/train.py" --data-dir "$REPO/trashnet_hf/sample" --pretrained false --image-size 32 \
    --epochs 1 --batch-size 16 --output-dir "$OUT" --report-to wandb >"$WORK/train.log" 2>&1 \
    || { tail -n 40 "$WORK/train.log" >&2; fail "the tiny train.py run failed (log tail above)"; }
for f in results.json model/model.safetensors; do
    [[ -s "$OUT/$f" ]] || { tail -n 40 "$WORK/train.log" >&2; fail "the tiny run wrote no $f"; }
done

say "OK: pip install . gives a working train.py"
