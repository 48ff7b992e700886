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


def test_nothing_in_accel_imports_core() -> None:
    """The execution layer sits below the core: the compiled losses live in trainer.core (no import runs back up)."""
    graph = import_graph()
    assert (
        sorted(
            m for m in graph if m.startswith("trainer.accel") and any(d.startswith("trainer.core") for d in graph[m])
        )
        == []
    )


def refusal_texts() -> dict[str, list[str]]:
    """The literal text of every `raise TrainerError(...)` in the package (f-string fields left out) -> modules."""
    found: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            call = node.exc if isinstance(node, ast.Raise) else None
            if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "TrainerError" and call.args:
                parts = [
                    n.value for n in ast.walk(call.args[0]) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                ]
                found.setdefault(" ".join("".join(parts).split()), []).append(module_name(path))
    return found


def test_no_refusal_exists_twice() -> None:
    """Every message the package can refuse with is written once (trainer.core.gate holds the config's refusals)."""
    texts = refusal_texts()
    assert len(texts) > 60  # the parser's, the gate's and the run-time ones
    assert {text: where for text, where in texts.items() if len(where) > 1} == {}
    gate = [text for text, where in texts.items() if where[0].startswith("trainer.core.gate")]
    assert len(gate) > 25 and any("cannot run under DeepSpeed" in text for text in gate)


def test_the_duplicate_finder_finds_one(tmp_path, monkeypatch) -> None:
    """Control: the same refusal raised in two modules is found."""
    pkg = tmp_path / "trainer"
    pkg.mkdir()
    for name in ("a", "b"):
        (pkg / f"{name}.py").write_text('def f(x):\n    raise TrainerError(f"x={x} is impossible: it must be 1.")\n')
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert refusal_texts() == {"x= is impossible: it must be 1.": ["trainer.a", "trainer.b"]}
