"""The shape of the code base: every module reachable by its dotted name, no attribute shadowing a module,
one module per name, no import cycle, no import of another package's private module.

The import graph is read from the source (``ast``), not by importing: every ``import`` statement of a project
module counts, also inside functions (a lazy import still couples two modules), except under
``if TYPE_CHECKING:``. ``from pkg import name`` is an edge to the module ``pkg.name`` when that is a module,
else to ``pkg`` itself.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sgdtraj", "quadsgd", "realnet", "validation")
#: the order of the layers: a package may import only packages listed before it
LAYERS = {"sgdtraj": 0, "quadsgd": 1, "realnet": 2, "validation": 3}


def project_modules() -> dict[str, Path]:
    """Dotted name -> source file, for every module of the four packages (``__main__`` excluded)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
           (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """The Import / ImportFrom nodes of a module, skipping ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (see the module docstring), with the packages whose
    ``__init__`` such an import runs."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    target = a.name
                    while target and target not in modules:
                        target = target.rpartition(".")[0]
                    if target:
                        edges.add(target)
                continue
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] not in PACKAGES:
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in modules:
                    edges.add(sub)
                elif mod in modules:
                    edges.add(mod)
        for target in list(edges):  # importing a.b.c runs a.b's __init__ too, unless the importer lives in a.b
            parts = target.split(".")
            for i in range(1, len(parts)):
                anc = ".".join(parts[:i])
                if anc in modules and not (name == anc or name.startswith(anc + ".")):
                    edges.add(anc)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    color: dict[str, int] = {}
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        color[u] = 1
        path.append(u)
        for v in sorted(graph.get(u, ())):
            if color.get(v) == 1:
                return path[path.index(v):] + [v]
            if color.get(v) is None:
                c = visit(v)
                if c:
                    return c
        path.pop()
        color[u] = 2
        return None

    for u in sorted(graph):
        if color.get(u) is None:
            c = visit(u)
            if c:
                return c
    return None


def private_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) where the imported module is private (a ``_name`` part) to another package.

    A module may import private modules of its own package (the part of the name before the private part).
    """
    bad = []
    for u, vs in graph.items():
        for v in vs:
            parts = v.split(".")
            for i, p in enumerate(parts):
                if p.startswith("_"):
                    owner = ".".join(parts[:i])
                    if not (u == owner or u.startswith(owner + ".")):
                        bad.append((u, v))
                    break
    return sorted(bad)


MODULES = project_modules()
GRAPH = import_graph(MODULES)


def test_the_graph_reader_sees_cycles_and_private_imports():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(g) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert private_imports({"realnet.x": {"quadsgd._files", "realnet._y"}, "quadsgd.z": {"quadsgd._files"}}) == \
        [("realnet.x", "quadsgd._files")]
    # the reader resolves relative imports and `from pkg import module`
    assert "quadsgd.kernels" in GRAPH["quadsgd"] and "sgdtraj.arguments" in GRAPH["quadsgd.kernels"]
    assert "realnet.sidetrips.lr_sweep" in GRAPH["realnet"]


def test_no_import_cycle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_no_module_imports_another_packages_private_module():
    assert private_imports(GRAPH) == []


def test_layers_import_only_downwards():
    bad = [(u, v) for u, vs in GRAPH.items() for v in vs
           if LAYERS[v.split(".")[0]] > LAYERS[u.split(".")[0]]]
    assert bad == []


def test_plumbing_knows_nothing_of_its_users():
    for name, path in MODULES.items():
        if name.startswith("sgdtraj"):
            text = path.read_text()
            for word in ("quadsgd", "realnet", "validation", "verdict", "checkpoint", "side-trip"):
                assert word not in text, (name, word)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_is_reachable_by_its_dotted_name(name):
    mod = importlib.import_module(name)
    assert mod.__name__ == name
    parent, _, child = name.rpartition(".")
    if parent:  # the package attribute of that name is the module itself, not a function or class
        assert getattr(importlib.import_module(parent), child) is mod, f"{parent}.{child} is shadowed"


def test_no_package_attribute_shadows_a_submodule():
    for name, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        pkg = importlib.import_module(name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name == "__main__":
                continue
            value = getattr(pkg, info.name, None)
            if value is not None:
                assert value is importlib.import_module(f"{name}.{info.name}"), f"{name}.{info.name} is shadowed"


#: leaf names a package may reuse for its own conventional module
CONVENTIONAL = {"config"}


def test_one_module_per_name():
    seen: dict[str, str] = {}
    for name in MODULES:
        leaf = name.rpartition(".")[2]
        if leaf in PACKAGES or leaf in CONVENTIONAL or name.endswith("__init__"):
            continue
        key = leaf.lstrip("_").replace("_", "")
        assert key not in seen or seen[key].rpartition(".")[0] == name.rpartition(".")[0], \
            f"{name} and {seen[key]} share a name"
        seen.setdefault(key, name)


def test_the_readme_api_imports():
    import quadsgd.simulation as sim
    import quadsgd.sweeps as sw
    import realnet.averaging as ra

    assert ra.KernelAveragedModel.__module__ == "realnet.averaging"
    assert callable(sim.simulate) and callable(sw.sweep)
    import quadsgd
    import realnet

    assert quadsgd.simulate is sim.simulate and quadsgd.sweep is sw.sweep
    assert realnet.averaging is ra and callable(realnet.averaging_sidetrip)
