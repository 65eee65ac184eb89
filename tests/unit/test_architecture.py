"""The import structure of backend/ and studio/, read from the source (every import statement,
function-level ones included): no cycle among project modules, and no import against the layer
order that docs/ARCHITECTURE.md describes."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top; a module may import its own layer and the layers below it, never one above.
LAYERS = (
    "backend.core",
    "backend.data",
    "backend.runs",
    "backend.methods",
    "backend.objectives",
    "backend.estimator",
    "backend.training",
    "backend.export",
    "backend.inference",
    "studio",
    "backend.commands",  # the command line sits on everything: `ftstudio ui` starts the studio
)
LAYER_OF_TOP_MODULES = {"backend": None, "backend.cli": "backend.commands"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = [p for top in ("backend", "studio") for p in (ROOT / top).rglob("*.py")]
    return {module_name(p): p for p in files}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules one file imports, wherever the import statement stands."""
    out: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    out.add(sub)
                elif base in known:
                    out.add(base)
    # Importing a.b.c from outside package a.b first runs a.b's __init__ (which may import its
    # whole package): that is an edge too. From inside the package it is already running.
    me = module_name(path)
    for target in list(out):
        parts = target.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in known and not (me == parent or me.startswith(parent + ".")):
                out.add(parent)
    out.discard(me)
    return out


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {name: imports_of(path, set(mods)) for name, path in mods.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def layer_of(module: str) -> int | None:
    if module in LAYER_OF_TOP_MODULES:
        top = LAYER_OF_TOP_MODULES[module]
        return None if top is None else LAYERS.index(top)
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return i
    raise AssertionError(f"{module} is in no layer; add its package to LAYERS and docs/ARCHITECTURE.md")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in sorted(graph.items()):
        here = layer_of(mod)
        for target in sorted(targets):
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                bad.append(f"{mod} imports {target} ({LAYERS[there]} is above {LAYERS[here]})")
    return bad


def test_the_cycle_finder_sees_a_cycle_and_a_self_contained_chain():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_reads_function_level_and_package_imports(tmp_path):
    graph = import_graph()
    # A function-level import and a `from package import module` are both edges.
    assert "backend.data.records" in graph["backend.commands.data"]  # imported inside a function there
    assert "backend.runs.rundir" in graph["backend.runs.runner"]
    assert len(graph) > 60


def test_no_import_cycle_among_project_modules():
    cycles = find_cycles(import_graph())
    assert not cycles, "modules that import each other in a loop:\n" + "\n".join(", ".join(c) for c in cycles)


def test_no_import_runs_against_the_layer_order():
    bad = upward_imports(import_graph())
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_every_project_module_belongs_to_a_layer():
    for mod in project_modules():
        layer_of(mod)


def test_backend_never_imports_gradio():
    for mod, path in project_modules().items():
        if mod.startswith("backend"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            assert "gradio" not in names, f"{mod} imports gradio; the UI lives in studio/"
