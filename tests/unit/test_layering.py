"""The folder tree is the architecture: this keeps it so.

Every import between the project's packages must point down the layers below, never up, never
sideways between two integrations, and never around a circle. Counted as imports: lazy ones
inside functions and ``TYPE_CHECKING`` ones (dependencies all the same), relative ones, and any
string that names a project module (``importlib.import_module("pipeline.cli.replay")``, the
CLI's command table). A dynamic import of a computed name is allowed only where listed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import ROOT

PACKAGES = ("parsers", "pipeline", "sinks")

# Lower number = lower layer. A module may import from its own layer only within its own
# package (e.g. pipeline.core.engine -> pipeline.core.findings), and from any lower layer.
LAYERS: dict[str, int] = {
    "parsers": 0,
    # The root modules, named one by one: a new package under pipeline/ must be given a layer.
    "pipeline": 1,  # __init__: the version
    "pipeline.errors": 1,
    "pipeline.config": 1,
    "pipeline.secrets": 1,
    "pipeline.listen": 1,
    "pipeline.core": 2,
    "pipeline.sources": 3,
    "sinks": 3,
    "pipeline.contracts": 4,
    "pipeline.crowdsec": 5,
    "pipeline.kube": 5,
    "pipeline.kafka": 5,
    "pipeline.live": 6,
    "pipeline.cli": 7,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


ROOT_MODULES = {
    "pipeline",
    "pipeline.errors",
    "pipeline.config",
    "pipeline.secrets",
    "pipeline.listen",
}


def group_of(layer: str) -> str:
    """The package a layer key belongs to: the root modules are one package, not peers."""
    return "pipeline" if layer in ROOT_MODULES else layer


# (module, what it imports by a computed name): reviewed exceptions to "imports are literal".
DYNAMIC_IMPORTS = {
    ("pipeline.cli.main", "name"),  # the COMMANDS table, whose strings are checked as imports
}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[module_name(path)] = path
    return out


MODULES = modules()


def layer_of(module: str) -> str:
    """The longest LAYERS key that is ``module`` or one of its parents, except that the bare
    ``pipeline`` key stands for ``pipeline/__init__.py`` only (no catch-all for new folders)."""
    best = ""
    for key in LAYERS:
        if key == "pipeline" and module != "pipeline":
            continue
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    assert best, f"{module} is in no layer: add it (or its package) to LAYERS"
    return best


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module a relative ``from . import x`` in ``module`` starts from."""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    up = node.level - 1
    base = parts[: len(parts) - up] if up else parts
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import in the file, however written."""
    name = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _absolute(name, node, path.name == "__init__.py")
            if base.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in MODULES else base), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.Constant) and node.value in MODULES:
            yield str(node.value), node.lineno  # a module named in a string is imported somewhere


def dynamic_imports(path: Path) -> Iterator[tuple[str, int]]:
    """(source of the argument, line) of import_module/__import__ calls on a computed name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called in ("import_module", "__import__") and not isinstance(node.args[0], ast.Constant):
            yield ast.unparse(node.args[0]), node.lineno


def graph() -> dict[str, set[str]]:
    return {
        name: {target for target, _ in imports_of(path) if target != name}
        for name, path in MODULES.items()
    }


def layering_errors() -> list[str]:
    errors = []
    for name, path in MODULES.items():
        mine = layer_of(name)
        for target, line in imports_of(path):
            theirs = layer_of(target)
            where = f"{path.relative_to(ROOT)}:{line}: {name} imports {target}"
            if LAYERS[theirs] > LAYERS[mine]:
                errors.append(f"{where} (upward: {mine} is below {theirs})")
            elif LAYERS[theirs] == LAYERS[mine] and group_of(theirs) != group_of(mine):
                errors.append(f"{where} (sideways: {mine} and {theirs} are peers)")
    return errors


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
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


def test_every_module_has_a_layer() -> None:
    assert len(MODULES) > 50
    for name in MODULES:
        layer_of(name)


def test_no_upward_or_sideways_import() -> None:
    assert layering_errors() == []


def test_no_import_circle() -> None:
    assert cycles(graph()) == []


def test_no_unreviewed_dynamic_import() -> None:
    found = {(name, arg) for name, path in MODULES.items() for arg, _ in dynamic_imports(path)}
    assert found == DYNAMIC_IMPORTS


def test_relative_and_string_imports_are_seen(tmp_path: Path) -> None:
    """A relative import, or a module named in a string, is an edge like any other."""
    probe = ROOT / "pipeline" / "core" / "engine.py"
    edges = {target for target, _ in imports_of(probe)}
    assert "pipeline.core.findings" in edges
    cli = {target for target, _ in imports_of(ROOT / "pipeline" / "cli" / "main.py")}
    assert "pipeline.cli.replay" in cli  # only named in the COMMANDS table
    node = ast.parse("from ..live import runner").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert _absolute("pipeline.core.engine", node, is_package=False) == "pipeline.live"
    init = ast.parse("from .engine import Engine").body[0]
    assert isinstance(init, ast.ImportFrom)
    assert _absolute("pipeline.core", init, is_package=True) == "pipeline.core.engine"


def test_a_new_pipeline_package_needs_a_layer() -> None:
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("pipeline.newthing.module")
    assert layer_of("pipeline") == "pipeline"
    assert layer_of("pipeline.errors") == "pipeline.errors"


def test_parsers_import_nothing_of_the_project() -> None:
    for name, path in MODULES.items():
        if layer_of(name) == "parsers":
            assert {t.split(".")[0] for t, _ in imports_of(path)} <= {"parsers"}, name


@pytest.mark.parametrize(
    ("importer", "imported", "expected"),
    [
        ("pipeline.core.engine", "pipeline.live.runner", "upward"),
        ("pipeline.kafka.producer", "pipeline.crowdsec.lapi", "sideways"),
        ("sinks.report", "pipeline.sources.tail", "sideways"),
        ("pipeline.cli.run", "pipeline.core.engine", None),
    ],
)
def test_the_check_itself_catches_bad_edges(
    importer: str, imported: str, expected: str | None
) -> None:
    """The rules above would pass vacuously if layer_of misfiled modules; pin a few edges."""
    mine, theirs = LAYERS[layer_of(importer)], LAYERS[layer_of(imported)]
    if expected == "upward":
        assert theirs > mine
    elif expected == "sideways":
        assert theirs == mine and group_of(layer_of(importer)) != group_of(layer_of(imported))
    else:
        assert theirs < mine


def test_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
