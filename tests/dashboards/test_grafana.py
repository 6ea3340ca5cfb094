"""The Grafana dashboard shows label values (sites, scanners, subgroup values come from
events) only as text: no panel renders HTML or Markdown built from them, and no link is built
from a label or variable value."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GRAFANA = Path(__file__).resolve().parents[2] / "dashboards" / "grafana" / "monitor.json"
# Panels that render their own content as Markdown or HTML.
MARKUP_PANELS = frozenset({"text", "news", "dashlist", "ae3e-plotly-panel",
                           "marcusolsson-dynamictext-panel", "volkovlabs-echarts-panel"})
# Table cells drawn as text, colours or charts; none of them interprets the value as markup.
# (Not "image", which loads the value as a URL.)
TEXT_CELLS = frozenset({"auto", "color-text", "color-background", "gauge", "sparkline",
                        "json-view", "basic", "gradient-gauge", "lcd-gauge", "list", "lcd",
                        "gradient"})
LINK_KEYS = frozenset({"links", "dataLinks"})


def panels(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "type" in node and ("targets" in node or node.get("type") in MARKUP_PANELS):
            yield node
        for value in node.values():
            yield from panels(value)
    elif isinstance(node, list):
        for value in node:
            yield from panels(value)


def keyed(node: Any, keys: frozenset[str]) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys:
                yield key, value
            yield from keyed(value, keys)
    elif isinstance(node, list):
        for value in node:
            yield from keyed(value, keys)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(GRAFANA.read_text(encoding="utf-8"))
    return loaded


def test_no_panel_renders_markup() -> None:
    found = list(panels(dashboard()))
    assert len(found) > 10
    assert not [p.get("title") for p in found if p["type"] in MARKUP_PANELS]


def test_cells_and_gauges_draw_values_as_text() -> None:
    board = dashboard()
    cells = [value.get("type") for _, value in keyed(board, frozenset({"cellOptions"}))]
    modes = [value for _, value in keyed(board, frozenset({"displayMode"}))]
    assert modes and set(cells) | set(modes) <= TEXT_CELLS, (cells, modes)


def test_no_link_is_built_from_a_value() -> None:
    """Dashboard-level links may point at fixed URLs; a link inside a panel or field (a data
    link) would carry a label value or a variable into a URL."""
    board = dashboard()
    assert all(not isinstance(link, dict) or "$" not in json.dumps(link)
               for link in board.get("links", []))
    for panel in panels(board):
        for _, links in keyed(panel, LINK_KEYS):
            assert not links, (panel.get("title"), links)


def test_queries_name_a_model_version_model_version() -> None:
    """The label is ``model_version``, as on /metrics and in the alerts: no selector, grouping
    or legend uses a bare ``version`` label, and the version variable has the same name."""
    dashboard = json.loads(GRAFANA.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "model_version" in variables and "version" not in variables
    assert variables["model_version"]["definition"].endswith(", model_version)")
    filtered = 0
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            text = target.get("expr", "") + " " + target.get("legendFormat", "")
            assert not re.search(r"(?<![\w$])version\b", text), text
            filtered += 'model_version=~"$model_version"' in text
    assert filtered >= 10
