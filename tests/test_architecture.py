"""The house: merging/'s packages form layers, every import runs down a layer (or stays in its package),
and no chain of imports comes back to where it started (issue 20). Function-level imports count too:
a lazy import hides a cycle from Python, not from a reader. Imports under `if TYPE_CHECKING:` do not
run and are left out."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MERGING = ROOT / "merging"

# Lowest first. A module may import its own package and any package listed before it; "" is the
# package root (the CLI), which may import everything.
LAYERS = ("core", "adapters", "models", "tasks", "methods", "recipe", "evaluation", "engine", "store",
          "training", "lab", "search", "plots", "analysis", "")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """module → the merging modules it imports (a name imported from a package counts as its
    submodule when one of that name exists)."""
    paths = {module_name(p): p for p in MERGING.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        targets: set[str] = set()
        for node in ast.walk(tree):
            if _type_checking_only(node, parents):
                continue
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for target in found:
                while target and target not in paths:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        # `from merging.x import y` names both merging.x and merging.x.y: keep the most specific
        graph[name] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
    return graph


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (MERGING / parts[1]).is_dir()) else ""


def test_every_package_is_a_known_layer():
    packages = {p.name for p in MERGING.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS) - {""}


def test_every_import_runs_down_a_layer_or_stays_in_its_package():
    upward = []
    for module, targets in import_graph().items():
        here = LAYERS.index(layer_of(module))
        for target in targets:
            there = layer_of(target)
            if there != layer_of(module) and LAYERS.index(there) > here and target != "merging":
                upward.append(f"{module} → {target}")
    assert not upward, "imports that run back up a layer:\n" + "\n".join(sorted(upward))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules():
    # a package's __init__ re-exports its modules; those edges are the package's face, not a cycle
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and (MERGING / Path(*t.split(".")[1:])).is_dir())}
             for m, ts in import_graph().items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_library_never_imports_the_app():
    for module in import_graph():
        path = MERGING.joinpath(*module.split(".")[1:])
        source = (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text(encoding="utf-8")
        assert "import streamlit" not in source and "from pages" not in source, module
