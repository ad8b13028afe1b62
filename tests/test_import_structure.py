"""Every module of the package imports (without the CUDA op), and no two modules import each other, directly or
through a chain (imports inside functions included): the dependencies between modules are one-way."""

import ast
import importlib
import pkgutil
from pathlib import Path
from typing import Dict, List, Set

import mask2former_sim

PACKAGE = Path(mask2former_sim.__file__).parent


def module_names(root: Path, package: str) -> Dict[str, Path]:
    """``{dotted name: file}`` of every module under ``root`` (a package ``__init__`` is named as the package)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    assert package in names
    return names


def imported_modules(name: str, path: Path, modules: Set[str]) -> Set[str]:
    """The package modules ``name`` imports anywhere in its source (a ``from pkg import sub`` names ``pkg.sub``)."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here
            for _ in range(max(node.level - 1, 0)):
                base = base.rsplit(".", 1)[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:  # an attribute of a module: the module itself
                candidate = candidate.rsplit(".", 1)[0] if "." in candidate else ""
            # a module "imports" its own package while being imported: not an edge
            if candidate and candidate != name and not name.startswith(candidate + "."):
                found.add(candidate)
    return found


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every strongly connected set of more than one module (a chain of imports back to itself)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_analysis_finds_a_chain_of_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")  # inside a function: still counts
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from . import c\n")  # depends on the cycle, is not part of it
    modules = module_names(pkg, "pkg")
    graph = {m: imported_modules(m, p, set(modules)) for m, p in modules.items()}
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"} and graph["pkg.d"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_every_module_imports_and_no_modules_import_each_other():
    modules = module_names(PACKAGE, "mask2former_sim")
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="mask2former_sim."):
        importlib.import_module(info.name)
    assert set(modules) >= {"mask2former_sim.modeling.supervision", "mask2former_sim.modeling.criterion"}
    graph = {m: imported_modules(m, p, set(modules)) for m, p in modules.items()}
    assert "mask2former_sim.modeling.criterion" in graph["mask2former_sim.modeling.supervision"]
    assert cycles(graph) == []
