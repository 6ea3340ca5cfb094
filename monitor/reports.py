"""Evidently HTML drift reports: ``DataDriftPreset`` on the metadata and score columns, the
window against the baseline, one file per checked window (``CheckRun.report_path``).

The report is a second, familiar view for reviewers; the verdicts that page people are ours
(``monitor.checks``), which account for repeat studies of one patient and first-sight
categories. Evidently picks its test per column by type and sample size (KS or chi-square
p-values up to 1,000 reference rows, Wasserstein or Jensen-Shannon distances above);
``column_verdicts`` reads them back with the right direction for each.
"""

from __future__ import annotations

import html
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from monitor.errors import InsufficientDataError

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry, before its import

from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

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


def _prepared(frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]
              ) -> pd.DataFrame:
    out = {}
    for name in numeric:
        out[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    for name in categorical:
        values = frame[name].astype(object)
        out[name] = values.where(values.notna(), None).map(
            lambda v: None if v is None else str(v))
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


def write_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    path: Path,
    title: str | None = None,
) -> Path:
    """Write the Evidently report of ``current`` against ``reference`` to ``path`` (HTML)."""
    snapshot, _ = run_drift_preset(reference, current)
    page = snapshot.get_html_str(as_iframe=False)
    if title:
        heading = (f'<h2 style="font-family:sans-serif;margin:16px">'
                   f"{html.escape(title)}</h2>")
        page = page.replace("<body>", "<body>" + heading, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".html.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(path)
    return path
