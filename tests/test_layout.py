"""The package's shape: no import cycle, the config a leaf, the step and its parts blind to Config."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "trainer"
# The step, the objective, the guard, the inputs, the CUDA-graph wrapper, networks and data: built from Config by
# trainer.core.build, they never read it.
BLIND = [
    *("trainer.core.step", "trainer.core.losses", "trainer.core.guard", "trainer.core.inputs", "trainer.core.ema"),
    *("trainer.accel.cuda_graph", "trainer.accel.timer", "trainer.nets", "trainer.data", "trainer.run.stats"),
]


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Module -> the trainer modules it imports anywhere (top level, inside functions, under TYPE_CHECKING)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trainer"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}  # fmt: skip
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("trainer")}
        graph[name] = {m for m in found if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path (empty if none), by depth-first search."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return []


def test_no_import_cycle() -> None:
    assert cycle(import_graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    """Control: a cycle through three modules is found."""
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_config_is_a_leaf() -> None:
    assert import_graph()["trainer.config"] <= {"trainer.errors"}


def test_the_step_and_its_parts_never_see_config() -> None:
    graph = import_graph()
    readers = sorted(m for m in graph if m.startswith(tuple(BLIND)) and "trainer.config" in graph[m])
    assert readers == []


def test_no_test_scaffolding_in_the_package() -> None:
    """Fault injection and the CUDA-graph emulation live under tests/: the package reads no test-only variable."""
    text = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    assert "WGAN_GP_FAULT" not in text and "EMULATE" not in text and "TorchDispatchMode" not in text
