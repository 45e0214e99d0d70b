"""The package's layers, read from its import statements: no cycles, no upward arrows.

A reader should find where a token goes next from the folder names alone; that only holds
while each layer imports from the layers below it and never from above.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import tokenrelay

ROOT = Path(tokenrelay.__file__).parent

# Lowest first. A unit imports only from its own layer's units' lower layers and its own unit.
LAYERS: list[set[str]] = [
    {"errors", "events", "chat", "tokens", "telemetry", "ids", "asgi"},
    {"config", "redis_pool"},
    {"client"},
    {"providers"},
    {"relay"},
    {"store"},
    {"auth", "limits"},
    {"conversations", "responses"},
    {"ops"},
    {"services"},
    {"http"},
    {"wires", "api", "web"},
    {"serving"},
    {"app"},
    {"cli"},
    {"testing"},
]
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str | None:
    """``tokenrelay.relay.log`` -> ``relay``; None outside the package."""
    parts = module.split(".")
    if parts[0] != "tokenrelay" or len(parts) < 2:
        return None
    return parts[1]


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every tokenrelay module ``path`` imports, with the line, type-checking-only ones too."""
    package = ".".join(("tokenrelay", *path.relative_to(ROOT).with_suffix("").parts[:-1]))
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "tokenrelay":
                for alias in node.names:
                    yield f"tokenrelay.{alias.name}", node.lineno
            else:
                yield module, node.lineno


def arrows() -> Iterator[tuple[str, str, str]]:
    """(from unit, to unit, where) for every import between two units of the package."""
    for path in sorted(ROOT.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        here = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for module, line in imports(path):
            there = unit_of(module)
            if there is not None and there != here:
                yield here, there, f"{path.relative_to(ROOT)}:{line} imports {module}"


def test_every_unit_of_the_package_has_a_layer() -> None:
    units = {path.name.removesuffix(".py") for path in ROOT.iterdir()}
    units -= {"__init__", "__pycache__", "py.typed"}
    assert units - set(LAYER_OF) == set()


def test_no_unit_imports_from_a_layer_above_its_own() -> None:
    upward = [where for here, there, where in arrows() if LAYER_OF[there] > LAYER_OF[here]]
    assert upward == []


def test_the_units_import_graph_has_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for here, there, _ in arrows():
        graph.setdefault(here, set()).add(there)

    def cycle_from(unit: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(unit, ())):
            if nxt in path:
                return [*path[path.index(nxt) :], nxt]
            found = cycle_from(nxt, [*path, nxt])
            if found:
                return found
        return None

    cycles = [c for unit in sorted(graph) if (c := cycle_from(unit, [unit]))]
    assert cycles == []
