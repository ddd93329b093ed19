"""The architecture, checked: no import cycle, arrows point down, nothing outside models/ asks for a backend's name.

Only imports made when a module is loaded count (top level, not under ``TYPE_CHECKING``); an import inside a
function is a deliberate, lazy edge (a plugin path, an optional heavy dependency).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "joydataforge"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports when it is loaded."""
    tree = ast.parse(path.read_text("utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in [node] if not isinstance(node, (ast.If, ast.Try)) else ast.walk(node):
            if isinstance(sub, ast.ImportFrom):
                if sub.level:
                    base = package.split(".")[: len(package.split(".")) - sub.level + 1]
                    target = ".".join(base + ([sub.module] if sub.module else []))
                else:
                    target = sub.module or ""
                if target.startswith("joydataforge"):
                    for alias in sub.names:  # `from . import charts` imports a module
                        candidate = f"{target}.{alias.name}"
                        found.add(candidate if MODULES.get(candidate) else target)
            elif isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names if a.name.startswith("joydataforge"))
    return {m for m in found if m in MODULES and m != here}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: load_time_imports(path) for name, path in MODULES.items()}


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


# Lower layers never import higher ones (cli -> engine -> methods -> models/text/io -> records).
FORBIDDEN = {
    "joydataforge.models": ("joydataforge.engine", "joydataforge.methods", "joydataforge.cli"),
    "joydataforge.text": ("joydataforge.engine", "joydataforge.methods", "joydataforge.cli", "joydataforge.models"),
    "joydataforge.io": ("joydataforge.engine", "joydataforge.methods", "joydataforge.cli", "joydataforge.models"),
    "joydataforge.prompts": ("joydataforge.engine", "joydataforge.methods", "joydataforge.cli"),
    "joydataforge.methods": ("joydataforge.cli", "joydataforge.engine.local", "joydataforge.engine.ray_executor"),
    "joydataforge.engine": ("joydataforge.cli",),
    "joydataforge.evaluate": ("joydataforge.cli", "joydataforge.engine"),
    "joydataforge.sandbox": ("joydataforge.engine", "joydataforge.methods", "joydataforge.cli", "joydataforge.models"),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_arrows_point_down(layer):
    wrong = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name.startswith(layer + ".")
        for target in targets
        if target.startswith(FORBIDDEN[layer])
    ]
    assert not wrong, wrong


def test_configs_validate_without_the_engine():
    """A pipeline file validates (``joyforge validate``, ``schema``) without loading steps or model code."""
    reach: set[str] = set()
    todo = ["joydataforge.config.pipeline"]
    while todo:
        name = todo.pop()
        if name not in reach:
            reach.add(name)
            todo.extend(GRAPH[name])
    heavy = sorted(
        m
        for m in reach
        if m.startswith(("joydataforge.engine", "joydataforge.models.backends"))
        or (m.startswith("joydataforge.methods") and not m.endswith(".config"))
    )
    assert not heavy, heavy


def test_only_the_model_layer_names_backends():
    pattern = re.compile(r"""backend\s*[!=]=\s*["'](openai|llamacpp|vllm|transformers)["']""")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for name, path in MODULES.items()
        if not name.startswith("joydataforge.models")
        for n, line in enumerate(path.read_text("utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders
