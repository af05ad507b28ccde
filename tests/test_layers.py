"""Dependencies point one way: preprocessing -> data -> model -> evaluation -> training. Serving code
(the model and what builds on it for prediction) never loads the data-preparation stack."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trashnet_hf"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_imports() -> dict[str, set[str]]:
    """Each project module and the project modules it imports (any import statement, any depth)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "metrics_modules" in path.parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[_module_name(path)] = {n for n in names if n.startswith("trashnet_hf.")}
    return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every project module loaded by importing ``start`` (a package's __init__ loads with it)."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        for module in (name, *(name.rsplit(".", k)[0] for k in range(1, name.count(".")))):
            if module in graph and module not in seen:
                seen.add(module)
                todo.extend(graph[module])
    return seen


@pytest.mark.parametrize(
    ("module", "must_not_load"),
    [
        ("trashnet_hf.preprocessing", "trashnet_hf."),  # the shared definition imports nothing of ours
        ("trashnet_hf.config", "trashnet_hf.data"),
        ("trashnet_hf.data", "trashnet_hf.model"),
        ("trashnet_hf.data", "trashnet_hf.training"),
        ("trashnet_hf.data", "trashnet_hf.evaluation"),
        ("trashnet_hf.model", "trashnet_hf.data"),
        ("trashnet_hf.model", "trashnet_hf.training"),
        ("trashnet_hf.evaluation", "trashnet_hf.training"),
        ("trashnet_hf.predict", "trashnet_hf.data"),  # it lists folders with trashnet_hf.files
        ("trashnet_hf.files", "trashnet_hf.data"),
    ],
)
def test_no_import_points_upward(module: str, must_not_load: str) -> None:
    graph = _project_imports()
    assert module in graph
    loaded = _reaches(graph, module) - {module}
    assert not [m for m in loaded if m.startswith(must_not_load)], sorted(loaded)


def test_the_checker_sees_real_imports() -> None:
    # Control: training does load data and model; a checker that found nothing would pass vacuously.
    loaded = _reaches(_project_imports(), "trashnet_hf.training")
    assert {"trashnet_hf.data", "trashnet_hf.model", "trashnet_hf.preprocessing"} <= loaded


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: seconds
def test_predict_loads_no_data_stack_in_a_fresh_interpreter() -> None:
    # The AST check above sees project modules only; this sees third-party ones too.
    banned = ("datasets", "sklearn", "imagehash", "trashnet_hf.data")
    code = f"import sys, trashnet_hf.predict; print(sorted(m for m in {banned} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
