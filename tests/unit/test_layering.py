"""The folder tree is the architecture: this keeps it so.

Every import between the project's packages (lazy ones inside functions and ``TYPE_CHECKING``
ones included: they are dependencies all the same) must point down the layers below, never
up, never sideways between two integrations, and never around a circle.
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
    "pipeline": 1,  # the root modules: errors, config, secrets, __init__ (version)
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


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[module_name(path)] = path
    return out


MODULES = modules()


def layer_of(module: str) -> str:
    """The longest LAYERS key that is ``module`` or one of its parents."""
    best = ""
    for key in LAYERS:
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    assert best, f"{module} is in no layer: add its package to LAYERS"
    return best


def imports_of(path: Path) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import in the file, however nested."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield (full if full in MODULES else node.module), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield alias.name, node.lineno


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
            elif LAYERS[theirs] == LAYERS[mine] and theirs != mine:
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
        assert theirs == mine and layer_of(importer) != layer_of(imported)
    else:
        assert theirs < mine


def test_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
