"""The layers, read from the source: each imports only those below it, and only the store
speaks SQL.

    contract < detect < store < collect < checks < registry < alerting, metrics < surface

(surface: the API, the CLI, the server and the dashboard). Every import counts, at module
level or inside a function, since a deferred import is still an arrow."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = (ROOT / "monitor", ROOT / "dashboards", ROOT / "client" / "src" / "monitor_client")

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("contract", ("monitor_client", "monitor.errors", "monitor.config", "monitor.schema",
                  "monitor.safe_output", "monitor.grid", "monitor.vocabulary")),
    ("detect", ("monitor.detect",)),
    ("store", ("monitor.store", "monitor.privacy", "monitor.runtime")),
    ("collect", ("monitor.collect", "monitor.simulate")),
    ("checks", ("monitor.checks",)),
    ("registry", ("monitor.registry",)),
    ("alerting", ("monitor.alerting", "monitor.metrics")),
    ("surface", ("monitor.api", "monitor.commands", "monitor.cli", "monitor.server",
                 "monitor.__main__", "dashboards")),
)
SQL_BUILDERS = frozenset({"select", "insert", "update", "delete", "text", "func"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[:2] == ["client", "src"]:
        parts = parts[2:]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> Iterator[tuple[str, Path]]:
    for folder in SOURCES:
        for path in sorted(folder.rglob("*.py")):
            if "migrations" not in path.parts:
                yield module_name(path), path


def imports(path: Path) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(module, names imported from it) for every import statement; ``from monitor import
    registry`` imports the module ``monitor.registry``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = tuple(alias.name for alias in node.names)
            yield node.module, names
            if node.module in ("monitor", "dashboards"):
                for name in names:
                    yield f"{node.module}.{name}", ()


def layer_of(module: str) -> int | None:
    found = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS)
             for prefix in prefixes if module == prefix or module.startswith(prefix + ".")]
    return max(found)[1] if found else None


def test_every_module_has_a_layer() -> None:
    unplaced = [name for name, _ in source_files()
                if name not in ("monitor", "dashboards") and layer_of(name) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def test_no_import_points_up() -> None:
    upward = []
    for name, path in source_files():
        here = layer_of(name)
        for target, _ in imports(path):
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                upward.append(f"{name} ({LAYERS[here][0]}) imports {target} "
                              f"({LAYERS[there][0]})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_only_the_store_speaks_sql() -> None:
    outside = []
    for name, path in source_files():
        if name.startswith("monitor.store"):
            continue
        for target, names in imports(path):
            if target == "monitor.store.models" or (target.startswith("sqlalchemy") and (
                    SQL_BUILDERS & set(names))):
                outside.append(f"{name}: from {target} import {', '.join(names)}")
    assert not outside, "SQL outside monitor/store:\n" + "\n".join(outside)


@pytest.mark.parametrize(("module", "expected"), [
    ("monitor.store.db", "store"), ("monitor_client.events", "contract"),
    ("dashboards.views.overview", "surface"), ("monitor.checks.windows", "checks"),
])
def test_layer_lookup(module: str, expected: str) -> None:
    assert LAYERS[layer_of(module) or 0][0] == expected
