"""The package's layering: no import cycles among jacdc's modules (counting imports inside
functions too, which is where cycles hide), and the benchmarks use only public names."""

import ast
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
# The editable install maps `models/` and `tasks/` to `jacdc.models` and `jacdc.tasks`.
PACKAGES = {"jacdc": ROOT / "jacdc", "jacdc.models": ROOT / "models", "jacdc.tasks": ROOT / "tasks"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.glob("*.py")):
            mods[pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"] = path
    return mods


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the jacdc modules it imports anywhere in its body. `from pkg import name`
    points at `pkg.name` when that is a module, else at `pkg`; a submodule's implicit import
    of its parent package (which Python runs first) is not an edge."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.stem == "__init__"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module)
                for a in node.names:
                    full = f"{base}.{a.name}"
                    targets.append(full if full in mods else base)
            for t in targets:
                if t in mods and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_checker_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = import_graph()
    assert "jacdc._evaluators" in graph["jacdc._acdc"]
    assert "jacdc._acdc" in graph["jacdc._sharding"]  # an import inside a function counts
    assert "jacdc.models" in graph["jacdc._evaluators"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_engine_layers():
    """The evaluators import no algorithm; the memory model and sharding sit above them."""
    graph = import_graph()
    algorithms = {"jacdc._acdc", "jacdc._sharding", "jacdc._memory", "jacdc._sp", "jacdc._eap"}
    assert not graph["jacdc._evaluators"] & algorithms
    assert not graph["jacdc._mesh"] & (algorithms | {"jacdc._evaluators"})
    assert "jacdc._acdc" not in graph["jacdc._memory"]


def _private_uses(path: Path) -> list[str]:
    """`jacdc` private names a script uses: `from jacdc._x import ...`, `from jacdc import
    _x`, and attributes `_name` of a jacdc module."""
    found = []
    jacdc_names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jacdc"):
            if any(p.startswith("_") for p in node.module.split(".")):
                found.append(f"from {node.module} import ...")
            for a in node.names:
                if a.name.startswith("_"):
                    found.append(f"from {node.module} import {a.name}")
                jacdc_names.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("jacdc"):
                    if any(p.startswith("_") for p in a.name.split(".")):
                        found.append(f"import {a.name}")
                    jacdc_names.add((a.asname or a.name).split(".")[0])
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in jacdc_names
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_benchmarks_use_public_names(script):
    assert _private_uses(ROOT / "benchmarks" / script) == []
