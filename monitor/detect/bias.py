"""Is the model worse for some group? Performance and override metrics per subgroup (vendor,
scanner model, site, sex, age band, view), each against the rest of the window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from monitor.detect.metadata import aligned_groups, as_categories
from monitor.detect.performance import WORSE_WHEN_HIGHER, Metric, as_reads, metric_outcomes
from monitor.detect.result import DetectionResult
from monitor.detect.stats import (
    benjamini_hochberg,
    cluster_codes,
    clustered_two_proportion_test,
    two_proportion_test,
    wilson_interval,
)
from monitor.errors import ValidationError

DEFAULT_FIELDS = ("vendor", "scanner_model", "site", "sex", "age_band", "view")
DEFAULT_METRICS: tuple[Metric, ...] = ("sensitivity", "specificity", "override_rate")


class SubgroupBias:
    """Per subgroup and metric: the group's value against the rest of the window.

    For every value of every field present in the frame and every metric: n (the metric's
    denominator in the group), the value with a Wilson 95% interval, the rest's value, the
    gap (group − rest, also the result's ``statistic``) and a two-sided two-proportion test
    of group against rest (cluster-robust when patient keys are passed as ``groups``, since
    one patient's studies can fall on both sides, e.g. a PA and a lateral view). A disparity
    in either direction is a finding; ``details["direction"]`` says which.

    The check makes many comparisons, so drift is decided on Benjamini–Hochberg q-values
    across all tested subgroup × metric comparisons of the call: ``drift = q < fdr``
    (``threshold`` is ``fdr``, ``details["q_value"]``). A group or rest under
    ``min_group_size`` is reported with ``p_value=None`` and ``details["status"] ==
    "insufficient data"``, never dropped, and takes no part in the correction.

    Fields missing from the frame are skipped; rows with a missing field value belong to no
    group of that field but count in the rest. ``fit`` is optional: it stores the
    baseline's per-group values, which then appear as ``details["baseline_value"]``.
    ``feature`` is ``"{field}={value}:{metric}"``.
    """

    def __init__(
        self,
        *,
        fields: Sequence[str] = DEFAULT_FIELDS,
        metrics: Sequence[Metric] = DEFAULT_METRICS,
        min_group_size: int = 30,
        fdr: float = 0.05,
    ):
        self.fields = fields
        self.metrics = metrics
        self.min_group_size = min_group_size
        self.fdr = fdr

    def fit(self, reference: pd.DataFrame, *, groups: Any = None) -> SubgroupBias:
        _check_fields(self.fields)
        baseline: dict[tuple[str, str, str], float | None] = {}
        reads = as_reads(reference)
        for field in self.fields:
            if field not in reference.columns:
                continue
            values = as_categories(reference[field], field=field)
            for metric in self.metrics:
                denominator, success = metric_outcomes(reads, metric)
                table = pd.DataFrame({"value": values[denominator], "ok": success[denominator]})
                for value, rate in table.dropna().groupby("value")["ok"].mean().items():
                    baseline[(field, str(value), metric)] = float(rate)
        self.baseline_values_ = baseline
        return self

    def test(self, frame: pd.DataFrame, *, groups: Any = None) -> list[DetectionResult]:
        _check_fields(self.fields)
        reads = as_reads(frame)
        ids = aligned_groups(groups, len(reads), field="subgroups")
        # Integer patient codes once for the whole frame (a missing key is its own patient).
        codes = None if ids is None else cluster_codes(ids, len(reads), None, 0)[0]
        baseline = getattr(self, "baseline_values_", {})
        outcomes = {metric: metric_outcomes(reads, metric) for metric in self.metrics}
        rows: list[dict[str, Any]] = []
        for field in self.fields:
            if field not in frame.columns:
                continue
            labels = as_categories(frame[field], field=field)
            value_codes, values = pd.factorize(labels)  # missing: -1, in no group
            for metric in self.metrics:
                denominator, success = outcomes[metric]
                for code in np.argsort(values.astype(str)):
                    rows.append(
                        self._compare(
                            field,
                            str(values[code]),
                            metric,
                            in_group=value_codes[denominator] == code,
                            outcome=success[denominator].astype(float),
                            ids=None if codes is None else codes[denominator],
                            baseline=baseline,
                        )
                    )
        tested = [i for i, row in enumerate(rows) if row["p_value"] is not None]
        q_values = benjamini_hochberg([rows[i]["p_value"] for i in tested])
        for i, q in zip(tested, q_values, strict=True):
            rows[i]["q_value"] = float(q)
        return [self._result(row, n_comparisons=len(tested)) for row in rows]

    def _compare(
        self,
        field: str,
        value: str,
        metric: str,
        *,
        in_group: np.ndarray,
        outcome: np.ndarray,
        ids: np.ndarray | None,
        baseline: dict[tuple[str, str, str], float | None],
    ) -> dict[str, Any]:
        """One subgroup × metric: the group against everyone else in the metric's
        denominator (rows with a missing field value count in the rest)."""
        group, rest = outcome[in_group], outcome[~in_group]
        n, n_rest = group.size, rest.size
        successes, successes_rest = int(group.sum()), int(rest.sum())
        row: dict[str, Any] = {
            "field": field,
            "value": value,
            "metric": metric,
            "n": n,
            "successes": successes,
            "group_value": successes / n if n else None,
            "ci": wilson_interval(successes, n),
            "n_rest": n_rest,
            "rest_value": successes_rest / n_rest if n_rest else None,
            "rest_ci": wilson_interval(successes_rest, n_rest),
            "gap": (successes / n - successes_rest / n_rest) if n and n_rest else 0.0,
            "baseline_value": baseline.get((field, value, metric)),
            "p_value": None,
        }
        if n < self.min_group_size or n_rest < self.min_group_size:
            row["status"] = "insufficient data"
            return row
        if ids is None:
            test = two_proportion_test(successes_rest, n_rest, successes, n)
        else:
            test = clustered_two_proportion_test(
                rest, group, clusters_reference=ids[~in_group], clusters_current=ids[in_group]
            )
        row.update(
            status="ok",
            p_value=test.p_value,
            z=test.z,
            test=test.method,
            design_effect=test.design_effect,
        )
        return row

    def _result(self, row: dict[str, Any], *, n_comparisons: int) -> DetectionResult:
        q_value = row.get("q_value")
        drift = q_value is not None and q_value < self.fdr
        gap = float(row["gap"])
        details = {
            "family": "bias",
            "field": row["field"],
            "value": row["value"],
            "metric": row["metric"],
            "status": row["status"],
            "n": row["n"],
            "successes": row["successes"],
            "group_value": row["group_value"],
            "ci": row["ci"],
            "rest_value": row["rest_value"],
            "rest_ci": row["rest_ci"],
            "gap": gap,
            "direction": "worse" if _is_worse(row["metric"], gap) else "better",
            "q_value": q_value,
            "z": row.get("z"),
            "test": row.get("test"),
            "design_effect": row.get("design_effect"),
            "baseline_value": row["baseline_value"],
            "min_group_size": self.min_group_size,
            "fdr": self.fdr,
            "n_comparisons": n_comparisons,
            "multiple_testing": "benjamini-hochberg",
            "ci_method": "wilson 95%",
        }
        return DetectionResult(
            detector="SubgroupBias",
            feature=f"{row['field']}={row['value']}:{row['metric']}",
            statistic=gap,
            p_value=row["p_value"],
            threshold=self.fdr,
            drift=drift,
            n_reference=int(row["n_rest"]),
            n_current=int(row["n"]),
            details=details,
        )


def _is_worse(metric: str, gap: float) -> bool:
    return gap > 0 if WORSE_WHEN_HIGHER[metric] else gap < 0


def _check_fields(fields: Sequence[str]) -> None:
    if isinstance(fields, str):
        raise ValidationError(
            f"fields {fields!r} must be a sequence of column names", field="fields"
        )
