"""The GitHub Actions workflows pass actionlint (the checker that GitHub's own syntax check is not)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"
ACTIONLINT = shutil.which("actionlint")

pytestmark = pytest.mark.skipif(ACTIONLINT is None, reason="actionlint not installed (requirements.txt)")


def _lint(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ACTIONLINT, "-no-color", *map(str, files)], capture_output=True, text=True, timeout=120
    )


def test_workflows_pass_actionlint() -> None:
    files = sorted(WORKFLOWS.glob("*.y*ml"))
    assert files, f"no workflow files in {WORKFLOWS}"
    result = _lint(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    steps = "    steps:\n      - run: echo ${{ matrix.nope }}\n"
    bad.write_text("on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n" + steps)
    result = _lint(bad)
    assert result.returncode != 0 and "matrix" in result.stdout
