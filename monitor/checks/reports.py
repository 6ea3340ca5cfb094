"""Evidently HTML drift reports: ``DataDriftPreset`` on the metadata and score columns, the
window against the baseline, one file per checked window (``CheckRun.report_path``).

The report is a second, familiar view for reviewers; the verdicts that page people are ours
(``monitor.checks``), which account for repeat studies of one patient and first-sight
categories. Evidently picks its test per column by type and sample size (KS or chi-square
p-values up to 1,000 reference rows, Wasserstein or Jensen-Shannon distances above);
``column_verdicts`` reads them back with the right direction for each.

Safe output. Evidently writes the data into a ``<script>`` element as JSON and renders
category values as text and chart labels, so every event-derived value is first made inert
(``inert_value``: control and bidirectional characters dropped, ``< > & " '`` HTML-escaped).
The page is then checked to hold exactly Evidently's four inline scripts, and a
Content-Security-Policy allowing only those four (by SHA-256 hash) is written into its
``<head>``; ``report_policy`` reads it back so the API can send it as a header too. A script
that is not one of the four (a value that somehow broke out) does not run, in the API's
origin, in the dashboard's frame or from a downloaded file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from monitor.errors import InsufficientDataError, MonitorError
from monitor.safe_output import html_text

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry, before its import

NUMERIC_COLUMNS = ("kvp", "exposure_mas", "pixel_spacing_mm", "age_years", "score")
CATEGORICAL_COLUMNS = ("vendor", "scanner_model", "site", "view", "photometric",
                       "software_version", "sex", "age_band")


@dataclass(frozen=True)
class ColumnDrift:
    """Evidently's verdict on one column. ``value`` is a p-value when ``is_p_value`` (drift
    when below ``threshold``), else a distance (drift when at or above it)."""

    column: str
    method: str
    threshold: float
    value: float
    is_p_value: bool
    drift: bool


class ReportError(MonitorError):
    """The generated page is not what a safe report looks like; nothing is written."""


def inert_value(value: object) -> str:
    """An event-derived value as it may enter Evidently: control, format and bidirectional
    characters dropped, ``< > & " '`` HTML-escaped (so it can close no element, open no tag
    and break out of no attribute; distinct values stay distinct)."""
    return html_text(value)


def _prepared(frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]
              ) -> pd.DataFrame:
    out = {}
    for name in numeric:
        out[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    for name in categorical:
        values = frame[name].astype(object)
        inert = {value: inert_value(value) for value in values.dropna().unique()}
        out[name] = values.map(inert).where(values.notna(), None)  # each distinct value once
    return pd.DataFrame(out, index=frame.index)


def run_drift_preset(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numeric: Sequence[str] = NUMERIC_COLUMNS,
    categorical: Sequence[str] = CATEGORICAL_COLUMNS,
    preset_options: dict[str, Any] | None = None,
) -> tuple[Any, list[ColumnDrift]]:
    """Run ``DataDriftPreset`` on the columns present (with a value) in both frames.
    Returns Evidently's snapshot and the per-column verdicts."""
    if len(reference) == 0 or len(current) == 0:
        raise InsufficientDataError(
            f"an Evidently report needs rows on both sides (reference {len(reference)}, "
            f"current {len(current)})"
        )

    def usable(name: str) -> bool:
        return (name in reference.columns and name in current.columns
                and reference[name].notna().any() and current[name].notna().any())

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric = [c for c in numeric if usable(c)]
    categorical = [c for c in categorical if usable(c)]
    if not numeric and not categorical:
        raise InsufficientDataError("no column has values in both the reference and the window")
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    report = Report([DataDriftPreset(columns=[*numeric, *categorical],
                                     **(preset_options or {}))])
    with warnings.catch_warnings():
        # scipy's chi-square divides by zero for a category absent from the reference
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(
            Dataset.from_pandas(_prepared(current, numeric, categorical),
                                data_definition=definition),
            Dataset.from_pandas(_prepared(reference, numeric, categorical),
                                data_definition=definition),
        )
    return snapshot, column_verdicts(snapshot)


def column_verdicts(snapshot: Any) -> list[ColumnDrift]:
    """The ``ValueDrift`` metrics of a ``DataDriftPreset`` snapshot, one per column."""
    verdicts = []
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        method = str(config.get("method", ""))
        threshold = float(config.get("threshold"))
        value = float(metric["value"])
        is_p_value = "p_value" in method
        drift = value < threshold if is_p_value else value >= threshold
        verdicts.append(ColumnDrift(str(config["column"]), method, threshold, value,
                                    is_p_value, drift))
    return verdicts


# The four inline scripts of Evidently's standalone page, in order: the data, a global for
# the bundle, the bundle, the call that draws the dashboard.
EXPECTED_SCRIPTS = (
    re.compile(r"\s*var metric_[0-9a-f]+ = \{.*\};\s*var additional_graphs_metric_[0-9a-f]+"
               r" = \{.*\};\s*", re.DOTALL),
    re.compile(r"\s*var global = globalThis\s*"),
    re.compile(r".{1000,}", re.DOTALL),
    re.compile(r"\s*window\.drawDashboard\(metric_[0-9a-f]+,\s*new Map\(Object\.entries\("
               r"additional_graphs_metric_[0-9a-f]+\)\),\s*\"root_metric_[0-9a-f]+\"\s*\);\s*"),
)
_SCRIPT_OPEN = re.compile(r"<script\b[^>]*>", re.IGNORECASE)
_SCRIPT_CLOSE = re.compile(r"</script[\s/>]", re.IGNORECASE)
_POLICY_META = re.compile(
    r'<meta http-equiv="Content-Security-Policy" content="([^"<>]*)">')
# What the page needs besides its own scripts: Evidently's CSS-in-JS (inline styles), the
# embedded icon font (data:), Plotly's images (data:, blob:). Nothing is fetched, posted,
# framed or used as a base.
REPORT_POLICY = ("default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; "
                 "font-src data:; img-src data: blob:; connect-src 'none'; "
                 "form-action 'none'; base-uri 'none'")
POLICY_HEAD_BYTES = 4096


def inline_scripts(page: str) -> list[str]:
    """The contents of the page's script elements, split as an HTML parser does: a script
    ends at the first ``</script`` after its start tag, whatever it contains."""
    scripts = []
    position = 0
    while opened := _SCRIPT_OPEN.search(page, position):
        closed = _SCRIPT_CLOSE.search(page, opened.end())
        if closed is None:
            raise ReportError("the report has a script element that never ends")
        scripts.append(page[opened.end():closed.start()])
        position = closed.end()
    return scripts


def script_hash(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def with_policy(page: str) -> str:
    """The page with a Content-Security-Policy ``<meta>`` first in its ``<head>`` that lets
    only its own four scripts run; raises ``ReportError`` when the scripts are not exactly
    Evidently's four."""
    scripts = inline_scripts(page)
    if len(scripts) != len(EXPECTED_SCRIPTS) or not all(
            pattern.fullmatch(script) for pattern, script in zip(EXPECTED_SCRIPTS, scripts,
                                                                 strict=True)):
        raise ReportError(f"the report holds {len(scripts)} scripts, not Evidently's "
                          f"{len(EXPECTED_SCRIPTS)}: refusing to write it")
    policy = REPORT_POLICY.format(scripts=" ".join(script_hash(s) for s in scripts))
    meta = f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
    if "<head>" not in page:
        raise ReportError("the report has no <head> for its policy")
    return page.replace("<head>", "<head>\n" + meta, 1)


def report_policy(path: Path) -> str | None:
    """The Content-Security-Policy written into a report's ``<head>`` (None for a report
    written without one, by an earlier version)."""
    with path.open("rb") as handle:
        head = handle.read(POLICY_HEAD_BYTES).decode("utf-8", errors="replace")
    found = _POLICY_META.search(head)
    return found.group(1) if found else None


def write_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    path: Path,
    title: str | None = None,
) -> Path:
    """Write the Evidently report of ``current`` against ``reference`` to ``path`` (HTML,
    with its Content-Security-Policy)."""
    snapshot, _ = run_drift_preset(reference, current)
    page = with_policy(snapshot.get_html_str(as_iframe=False))
    if title:
        heading = (f'<h2 style="font-family:sans-serif;margin:16px">'
                   f"{html_text(title)}</h2>")
        page = page.replace("<body>", "<body>" + heading, 1)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # reports are the user's alone
    temporary = path.with_suffix(".html.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(page)
    temporary.replace(path)
    return path
