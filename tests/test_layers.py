"""The package's wings (core, data, training, serving, hub) depend one way: serving and hub load no data
or training code, data knows no model, core sits under all; each __init__ only re-exports and every
function fits on a screen."""

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


def _wing(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else "root"


# Wing -> wings it may not load. Serving and hub must run in a Space without the data or training code,
# data knows nothing of the model, and core sits under everything.
FORBIDDEN = {
    "core": ("data", "training", "serving"),
    "data": ("training", "serving"),
    "serving": ("data", "training"),
    "hub": ("data", "training"),
}


@pytest.mark.parametrize("wing", sorted(FORBIDDEN))
def test_no_wing_loads_what_it_must_not(wing: str) -> None:
    graph = _project_imports()
    modules = [m for m in graph if _wing(m) == wing]
    assert modules, f"no modules in the {wing} wing"
    for module in modules:
        loaded = {_wing(m) for m in _reaches(graph, module)}
        assert not loaded & set(FORBIDDEN[wing]), f"{module} loads {sorted(loaded & set(FORBIDDEN[wing]))}"


@pytest.mark.parametrize(
    ("module", "must_not_load"),
    [
        ("trashnet_hf.core.preprocessing", "trashnet_hf."),  # the shared definition imports nothing of ours
        ("trashnet_hf.data", "trashnet_hf.core.model"),  # data knows no model
        ("trashnet_hf.training.evaluation", "trashnet_hf.training.loop"),
    ],
)
def test_no_import_points_upward(module: str, must_not_load: str) -> None:
    graph = _project_imports()
    assert module in graph
    parents = {module.rsplit(".", k)[0] for k in range(1, module.count("."))}  # its own packages load too
    loaded = _reaches(graph, module) - {module} - parents
    assert not [m for m in loaded if m.startswith(must_not_load)], sorted(loaded)


def test_the_checker_sees_real_imports() -> None:
    # Control: training does load data and model; a checker that found nothing would pass vacuously.
    loaded = _reaches(_project_imports(), "trashnet_hf.training.loop")
    assert {"trashnet_hf.data", "trashnet_hf.core.model", "trashnet_hf.core.preprocessing"} <= loaded


def test_package_inits_only_re_export() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        if "sample" in init.parts:
            continue
        lines = init.read_text().splitlines()
        assert len(lines) < 40, f"{init.relative_to(PACKAGE.parent)}: {len(lines)} lines"
        body = ast.parse(init.read_text()).body
        kinds = {type(node).__name__ for node in body}
        assert kinds <= {"Expr", "Import", "ImportFrom", "Assign", "AnnAssign", "FunctionDef"}, (init, kinds)


def test_no_function_is_over_60_lines() -> None:
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60
    ]
    assert not long, long


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: seconds each
@pytest.mark.parametrize(
    "entry",
    ["trashnet_hf.serving.predict", "trashnet_hf.serving.onnx", "trashnet_hf.serving.app",
     "trashnet_hf.serving.classifier"],
)  # fmt: skip
def test_serving_entry_points_load_no_data_or_training_stack(entry: str) -> None:
    # The AST checks above see project modules only; this sees third-party ones too.
    banned = ("datasets", "sklearn", "imagehash", "trashnet_hf.data", "trashnet_hf.training")
    code = f"import sys, {entry}; print(sorted(m for m in {banned} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
