"""The import structure of rayrl: no cycles, layers point one way, and every package imports on its own.

The layers (lowest first) are written out here, not derived from the code: a new import that points up
fails this test, and so does a new module that is not given a layer.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, env_for_tests

RAYRL = REPO / "rayrl"

# Each unit is a package of rayrl or a top-level module; a unit may import only units of lower layers
# (and its own modules). Units on one layer know nothing of each other.
LAYERS: list[set[str]] = [
    {"rayrl", "tensors", "checkpoint", "data"},  # no rayrl imports
    {"config", "algorithms", "models", "failures", "runlog", "trackers"},  # config: checkpoint's names
    {"run_lock", "engines", "console", "plot", "recovery", "export", "managers"},
    {"workers"},
    {"regenerate"},  # the pipeline's in-job recovery from lost rollout workers
    {"pipeline"},
    {"participants", "step", "replicas", "elastic", "shared_storage"},
    {"coordinator"},
    {"main"},
]
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(RAYRL.rglob("*.py"))}


def _imports(path: Path, name: str, is_package: bool) -> set[str]:
    """Every rayrl module ``path`` imports, at the top or inside a function (a late import is still a
    dependency), resolved to module names."""
    modules = _modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("rayrl") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path, name, path.name == "__init__.py") for name, path in _modules().items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "rayrl"


def test_every_module_has_a_layer():
    missing = sorted({_unit(m) for m in _modules()} - set(LAYER_OF))
    assert not missing, f"give these units a layer in LAYERS: {missing}"


def _upward(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            src, dst = _unit(module), _unit(target)
            if src != dst and LAYER_OF[dst] >= LAYER_OF[src]:
                found.append(f"{module} (layer {LAYER_OF[src]}) imports {target} (layer {LAYER_OF[dst]})")
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_imports_point_down():
    upward = _upward(_graph())
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_read_real_imports_and_catch_what_they_should():
    graph = _graph()
    assert "rayrl.checkpoint.layout" in graph["rayrl.checkpoint.manager"]  # from-imports
    assert "rayrl.engines.hf" in graph["rayrl.workers.rollout"]  # late imports inside a function
    assert "rayrl" in graph["rayrl.config.records"]  # plain "import rayrl"
    assert _upward({"rayrl.checkpoint.layout": {"rayrl.config"}}) == [
        "rayrl.checkpoint.layout (layer 0) imports rayrl.config (layer 1)"]
    assert _upward({"rayrl.tensors": {"rayrl.workers.actor"}})
    assert not _upward({"rayrl.workers.actor": {"rayrl.tensors", "rayrl.workers.base"}})
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


PACKAGES = sorted({".".join(m.split(".")[:2]) for m in _modules()})


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_in_a_fresh_interpreter(package):
    """A cycle that only bites in one import order shows here: each package first, alone."""
    proc = subprocess.run([sys.executable, "-c", f"import {package}"], cwd=REPO, env=env_for_tests(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
