"""The import layers: no cycles, and no lower layer importing a higher one.

Layers, lowest first: ``CACIdentifierLib`` (the workflow core) <
``CACTrainerLib`` (phantom, targets, losses, training, datasets) <
``CACAnnotatorLib`` (the annotation Logic) and ``cac`` (the command line and
the demo), which do not import each other < the Slicer module widgets
(``CACIdentifier.py``, ``CACTrainer.py``, ``CACAnnotator.py``).  Every import counts, also those inside functions (they
hide cycles from Python but not from a reader), and so does a string naming a
module (``importlib.import_module("cac.cli_io")``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "CACIdentifierLib": ROOT / "CACIdentifier" / "CACIdentifierLib",
    "CACTrainerLib": ROOT / "CACTrainer" / "CACTrainerLib",
    "CACAnnotatorLib": ROOT / "CACAnnotator" / "CACAnnotatorLib",
    "cac": ROOT / "CACTrainer" / "cac",
}
WIDGETS = {"CACIdentifier": ROOT / "CACIdentifier" / "CACIdentifier.py",
           "CACTrainer": ROOT / "CACTrainer" / "CACTrainer.py",
           "CACAnnotator": ROOT / "CACAnnotator" / "CACAnnotator.py"}
LAYER = {"CACIdentifierLib": 0, "CACTrainerLib": 1, "CACAnnotatorLib": 2, "cac": 2,
         "CACIdentifier": 3, "CACTrainer": 3, "CACAnnotator": 3}


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    for name, path in WIDGETS.items():
        out[name] = (path, False)
    return out


def imports_of(name: str, path: Path, is_package: bool, known) -> set[str]:
    """The project modules that module ``name`` imports (anywhere in its body)."""
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            stem = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join(stem + ([node.module] if node.module else []))
            # `from pkg import mod` imports the submodule; `from mod import name` the module.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
            targets = [node.value] if node.value in known else []
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, is_package, known) for name, (path, is_package) in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    return [f"{a} imports {b}" for a, targets in sorted(edges.items()) for b in sorted(targets)
            if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]]
            or (LAYER[b.split(".")[0]] == LAYER[a.split(".")[0]] and b.split(".")[0] != a.split(".")[0])]


def test_the_graph_sees_every_kind_of_import():
    edges = graph()
    assert "CACIdentifierLib.sync.signal" in edges["CACIdentifierLib.sync.pipeline"]  # relative, top level
    assert "CACIdentifierLib.errors" in edges["CACIdentifierLib.sync.signal"]  # two dots
    assert "CACIdentifierLib.nrrd_io" in edges["cac.cli_io"]  # `from pkg import module` inside a function
    assert "cac.cli_train" in edges["cac.cli"]  # a module named in a string (importlib)
    assert "CACTrainerLib.phantom" in edges["CACTrainerLib.phantom_writer"]


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_no_lower_layer_imports_a_higher_one():
    assert layer_violations(graph()) == []


def test_the_checks_fail_on_a_cycle_and_on_an_upward_import():
    edges = {"CACIdentifierLib.a": {"CACIdentifierLib.b"}, "CACIdentifierLib.b": {"CACIdentifierLib.a"},
             "CACTrainerLib.c": {"cac.cli"}, "cac.cli": set()}
    assert cycles(edges) == [["CACIdentifierLib.a", "CACIdentifierLib.b"]]
    assert layer_violations(edges) == ["CACTrainerLib.c imports cac.cli"]

