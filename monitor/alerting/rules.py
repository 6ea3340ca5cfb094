"""Alert rules and their evaluation on one check run.

A rule picks evidence from a check run and states a condition on it:

* ``detector:`` / ``family:`` (and optionally ``feature:``, a glob): one observation per
  matching detector result. Fields: ``drift``, ``p_value``, ``statistic``, ``threshold``,
  ``n_reference``, ``n_current``, ``value`` (the current metric value for performance
  results, else the statistic) and ``details.<key>``.
* ``metric:``: ``health_score`` or ``n_studies`` of the run (one observation), or a
  performance metric name (``sensitivity``, ``override_rate``, ...): one observation per
  result with that feature. The metric's value is ``value`` (and also its own name).

Every observation also sees the run's ``health_score`` and ``n_studies``. A condition is one
comparison or several joined by ``and``: ``drift == true``, ``p_value < 0.01``,
``health_score < 0.6``, ``value < 0.8 and n_current >= 50``. A field that is missing (a
result without p-value) makes its comparison false. Results marked insufficient data are no
evidence at all (as are failed detectors and runs): they produce no observation, so they
neither raise nor resolve an alert.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from monitor.detect.health import DETECTOR_FAMILIES
from monitor.store.results import CheckResultInfo, CheckRunInfo
from monitor.vocabulary import Severity

SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
RUN_METRICS = ("health_score", "n_studies")

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<=": operator.le, ">=": operator.ge,
    "<": operator.lt, ">": operator.gt,
}
_COMPARISON = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*$")
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RULE_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str
    value: bool | float | str

    def holds(self, values: Mapping[str, Any]) -> bool:
        found = _lookup(values, self.field)
        if found is None or (isinstance(found, float) and math.isnan(found)):
            return False
        if isinstance(self.value, bool) or isinstance(found, bool):
            if not isinstance(found, bool | int) or not isinstance(self.value, bool):
                return False
            found = bool(found)
        elif isinstance(self.value, float):
            if not isinstance(found, int | float):
                return False
            found = float(found)
        else:
            found = str(found)
        try:
            return bool(_OPERATORS[self.op](found, self.value))
        except TypeError:
            return False

    def __str__(self) -> str:
        value = str(self.value).lower() if isinstance(self.value, bool) else self.value
        return f"{self.field} {self.op} {value}"


def _lookup(values: Mapping[str, Any], field: str) -> Any:
    current: Any = values
    for part in field.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current


def _literal(text: str, *, condition: str) -> bool | float | str:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"condition {condition!r}: {text!r} is not true, false, a number or a quoted string"
        ) from None


def parse_condition(text: str) -> tuple[Comparison, ...]:
    """``"p_value < 0.01 and n_current >= 50"`` -> comparisons that must all hold."""
    parts = re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE)
    comparisons = []
    for part in parts:
        match = _COMPARISON.match(part)
        if match is None:
            raise ValueError(
                f"condition {text!r}: {part!r} is not '<field> <op> <value>' with op one of "
                f"{', '.join(_OPERATORS)}"
            )
        field, op, literal = match.groups()
        comparisons.append(Comparison(field, op, _literal(literal, condition=text)))
    return tuple(comparisons)


class Rule(BaseModel):
    """One alert rule (see the module docstring and ``alerts/monitor-rules.example.yml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    detector: list[str] = Field(default_factory=list)
    family: list[str] = Field(default_factory=list)
    feature: str | None = None
    metric: str | None = None
    condition: str
    for_windows: int = Field(default=1, ge=1, alias="for")
    severity: Severity = "warning"
    category: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    summary: str | None = None
    windows: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)

    @field_validator("detector", "family", "windows", "models", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _RULE_NAME.match(value):
            raise ValueError(f"rule name {value!r} may hold only letters, digits and _.:-")
        return value

    @field_validator("condition")
    @classmethod
    def _condition(cls, value: str) -> str:
        parse_condition(value)
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _LABEL_NAME.match(name):
                raise ValueError(f"label name {name!r} is not [A-Za-z_][A-Za-z0-9_]*")
        return value

    @model_validator(mode="after")
    def _evidence(self) -> Rule:
        selects_results = bool(self.detector or self.family)
        if self.metric is None and not selects_results:
            raise ValueError(f"rule {self.name!r} needs detector:, family: or metric:")
        if self.metric in RUN_METRICS and (selects_results or self.feature is not None):
            raise ValueError(f"rule {self.name!r}: metric {self.metric!r} belongs to the run; "
                             "drop detector:, family: and feature:")
        return self

    @property
    def comparisons(self) -> tuple[Comparison, ...]:
        return parse_condition(self.condition)

    @property
    def category_label(self) -> str:
        if self.category:
            return self.category
        if self.family:
            return self.family[0]
        return self.metric or self.detector[0]

    def applies_to(self, run: CheckRunInfo) -> bool:
        if self.models and run.model not in self.models:
            return False
        return not self.windows or run.window_label in self.windows


@dataclass(frozen=True)
class Observation:
    """What one rule saw in one check run for one alert key."""

    rule: Rule
    key: str
    labels: dict[str, str]
    active: bool
    values: dict[str, Any]
    summary: str


def alert_key(rule: str, model: str, version: str, scope: Mapping[str, str]) -> str:
    """Stable dedup key: the same rule, model, version and feature labels give the same key."""
    text = json.dumps([rule, model, version, sorted(scope.items())], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:48]


def family_of(result: CheckResultInfo) -> str:
    family = (result.details or {}).get("family")
    return str(family) if family else DETECTOR_FAMILIES.get(result.detector, result.detector)


def _no_evidence(result: CheckResultInfo) -> bool:
    return (result.details or {}).get("status") in ("insufficient data", "failed")


def _result_values(result: CheckResultInfo, run: CheckRunInfo) -> dict[str, Any]:
    details = dict(result.details or {})
    current = details.get("current")
    value = current.get("value") if isinstance(current, Mapping) else None
    return {
        "drift": bool(result.drift),
        "p_value": result.p_value,
        "statistic": result.statistic,
        "threshold": result.threshold,
        "n_reference": result.n_reference,
        "n_current": result.n_current,
        "value": value if value is not None else result.statistic,
        "details": details,
        "health_score": run.health_score,
        "n_studies": run.n_studies,
    }


def _matches(rule: Rule, result: CheckResultInfo) -> bool:
    if rule.detector and result.detector not in rule.detector:
        return False
    if rule.family and family_of(result) not in rule.family:
        return False
    if rule.feature is not None and not fnmatch.fnmatchcase(result.feature, rule.feature):
        return False
    return not (rule.metric is not None and result.feature != rule.metric)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _summary(rule: Rule, labels: Mapping[str, str], values: Mapping[str, Any]) -> str:
    if rule.summary:
        fields = {**{k: _format(v) for k, v in values.items() if k != "details"}, **labels}
        return rule.summary.format_map(_Missing(fields))
    where = f"{labels['model']} {labels['model_version']}"
    if "feature" in labels:
        where += f" {labels['detector']}/{labels['feature']}"
    shown = ", ".join(f"{c.field}={_format(_lookup(values, c.field))}" for c in rule.comparisons)
    return f"{rule.name}: {where}: {rule.condition} ({shown})"


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _observation(rule: Rule, run: CheckRunInfo, scope: dict[str, str],
                 values: dict[str, Any], category: str | None = None) -> Observation:
    labels = {
        **rule.labels,  # the rule's own labels cannot override the ones below
        "alertname": rule.name,
        "model": run.model,
        "model_version": run.version,
        "severity": rule.severity,
        "category": category or rule.category_label,
        **scope,
    }
    active = all(c.holds(values) for c in rule.comparisons)
    return Observation(rule, alert_key(rule.name, run.model, run.version, scope), labels,
                       active, values, _summary(rule, labels, values))


def _category(rule: Rule, result: CheckResultInfo) -> str | None:
    """A rule without its own category on a stream's evidence takes the stream's family
    (``embedding``, ``performance``, ...), which rollback policies select on."""
    if rule.category:
        return rule.category
    of_family = (result.details or {}).get("of_family")
    return str(of_family) if of_family else None


def observe(rule: Rule, run: CheckRunInfo) -> list[Observation]:
    """The rule's observations in one check run (none where it has no evidence)."""
    if not rule.applies_to(run) or run.status not in ("ok", "partial"):
        return []
    if rule.metric in RUN_METRICS:
        value = getattr(run, rule.metric)
        if value is None:
            return []
        values = {"value": value, "health_score": run.health_score, "n_studies": run.n_studies}
        return [_observation(rule, run, {}, values)]
    observations = []
    for result in run.results:
        if not _matches(rule, result) or _no_evidence(result):
            continue
        values = _result_values(result, run)
        if rule.metric is not None:
            values[rule.metric] = values["value"]
        scope = {"detector": result.detector, "feature": result.feature}
        observations.append(_observation(rule, run, scope, values, _category(rule, result)))
    return observations


def observe_all(rules: Sequence[Rule], run: CheckRunInfo) -> list[Observation]:
    return [obs for rule in rules for obs in observe(rule, run)]


def _rule(**fields: Any) -> Rule:
    return Rule.model_validate(fields)


# The built-in rules, used when the config file has no ``rules:``. A check runs some ninety
# tests, so a rule on each test's own verdict would alert on most days with no shift at all.
# Every grid check stores one ``SequentialEvidence`` row per stream whose level comes from a
# cumulative statistic with a stated false-alarm rate (``monitor.detect.sequential``: one
# false page per version per 365 days, one false warning per 90), so the defaults alert on
# those levels, at once. The run's health comes from the same levels: a rule on it would
# repeat them. Their category is the stream's family (``embedding``, ``performance``, ...),
# which rollback policies select on. Alerts are findings; what notifies is their incident
# (``monitor.alerting.incidents``).
SEQUENTIAL_DETECTOR = "SequentialEvidence"
DEFAULT_RULES: tuple[Rule, ...] = (
    _rule(name="sequential-page", detector=SEQUENTIAL_DETECTOR,
          condition='details.level == "page"', severity="critical",
          summary="{model} {model_version}: {feature} at paging level (Z={statistic})"),
    _rule(name="sequential-warning", detector=SEQUENTIAL_DETECTOR,
          condition='details.level == "warning"', severity="warning",
          summary="{model} {model_version}: {feature} at warning level (Z={statistic})"),
)
