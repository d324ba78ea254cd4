"""Layers without import cycles, and no oversized modules, in optimizer/ and passes/.

The layering is IR (``ir``, ``values``) -> ONNX boundary (``onnx_io``, ``model_files``,
``onnx_checks``, the graphsurgeon adapter) -> executor -> cost / verification / oracle ->
passes -> api -> cli / zoo, each module importing only downward. A cycle is the sign that a
module reached up, so every import is walked with ``ast``: module-level and inside
functions (a lazy import is still a dependency), ``from pkg import sub`` resolved to the
submodule when ``sub`` is one, and ``importlib.import_module("...")`` string literals.
Imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("optimizer", "passes")
MAX_LINES = 600


def _modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages (a package is its __init__)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def _imported_names(name: str, path: Path) -> list[str]:
    """Every module name the file imports, as written (relative imports made absolute)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.extend(f"{base}.{alias.name}" for alias in node.names)  # resolved to base if not a module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and (
                    (isinstance(node.func, ast.Name) and node.func.id == "import_module")
                    or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")):
            names.append(node.args[0].value)
    return names


def import_graph(root: Path = ROOT, packages=PACKAGES) -> nx.DiGraph:
    """Module -> module it imports, over the packages' own modules only."""
    modules = _modules(root, packages)
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for target in _imported_names(name, path):
            while target and target not in modules:  # `from pkg import name`: the package; `import a.b.c`: a.b.c
                target = target.rpartition(".")[0]
            if target and target != name:
                graph.add_edge(name, target)
    return graph


def import_cycles(graph: nx.DiGraph) -> list[str]:
    """One cycle per strongly connected group of modules, as ``a -> b -> a``."""
    found = []
    for group in nx.strongly_connected_components(graph):
        if len(group) > 1:
            cycle = nx.find_cycle(graph.subgraph(group))
            found.append(" -> ".join([u for u, _ in cycle] + [cycle[0][0]]))
    return sorted(found)


def test_no_import_cycles_in_optimizer_and_passes() -> None:
    graph = import_graph()
    assert {"optimizer.ir", "optimizer.onnx_io", "optimizer.executor.core", "optimizer.api", "passes"} <= set(graph)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (each module must import only lower layers):\n" + "\n".join(cycles)


def test_no_module_is_over_600_lines() -> None:
    sizes = {path.relative_to(ROOT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
             for path in _modules(ROOT).values()}
    too_long = sorted(f"{name} ({count} lines)" for name, count in sizes.items() if count > MAX_LINES)
    assert not too_long, f"over {MAX_LINES} lines, split along a real seam: " + ", ".join(too_long)


def test_the_walk_sees_lazy_submodule_and_import_module_imports(tmp_path: Path) -> None:
    """The detector itself: each kind of import closes a planted cycle, and type-checking imports do not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from pkg import high  # lazy, and a submodule\n")
    (pkg / "high.py").write_text("import importlib\nfrom .sub import leaf\nimportlib.import_module('pkg.mid')\n")
    (pkg / "mid.py").write_text("from pkg.low import f\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import high\nfrom .. import VERSION\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert set(graph.edges) == {("pkg.low", "pkg.high"), ("pkg.high", "pkg.sub.leaf"), ("pkg.high", "pkg.mid"),
                                ("pkg.mid", "pkg.low"), ("pkg.sub.leaf", "pkg")}
    (cycle,) = import_cycles(graph)
    assert set(cycle.split(" -> ")) == {"pkg.low", "pkg.high", "pkg.mid"}
