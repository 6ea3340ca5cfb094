"""Incidents: the findings (alerts) of one model version that share a cause, and what notifies.

A team that gets one page per test stops reading them. After the rules of a check run have
updated its alerts (``monitor.alerting.engine``), ``group_run`` gives every pending or firing
alert of the run's version a *cause* and files it under the open incident of that cause, in
the same transaction:

* a subgroup stream (``SubgroupBias/age_band=80+:sensitivity``, or a rule on
  ``SubgroupBias`` itself): the subgroup, ``age_band=80+``; a subgroup on a stratum field
  (``scanner_model=Ysio Max``) is named like the stratum where the run's attribution counts
  the same studies under other names (``subgroup_cause``), so it joins that stratum's
  incident;
* a finding on the inputs or the outputs (embedding, metadata, prediction): the run's
  attribution (``Attribution`` rows, the embedding basis first), its ranking canonicalised.
  Among the entries whose ``n_current`` is within 5% of the top one's (and whose
  contribution is at least a quarter of it: the same studies explaining the same drift; a
  new value, which the reference never held, explains more than its device), the most
  specific field names the cause, in the order station > scanner_model > software_version >
  site > vendor, and the others go into its label: a vendor and its only scanner model are
  one cause, "FDR Smart X (Fujifilm)"; a station whose studies all carry a new software
  version is "XR-SOUTH-1 (Ysio Max, software VF12B)". A finding on a stratum's own
  distribution (``CategoricalDrift`` of the vendor, the scanner model, ...) is canonicalised
  around that field's leading value instead: a new vendor the day after a software update
  is an incident of its own; a novelty finding, around the novel studies' own composition
  (attribution basis ``novelty``: a few inverted images from one scanner barely move the
  window's mean, so the embedding basis would name whatever else moved that day);
* a performance finding (a metric of the whole version against its reads, such as the
  specificity): the subgroup whose gap grew while the rest of the window held
  (``explaining_subgroup``: without the patients aged 80+ the drop all but vanishes), else
  the version itself (``version``), as for a finding with no attribution.

An alert keeps its incident while that incident is open (a later day's attribution may rank
a site above the scanner; the page is not repeated for it); a new alert joins an open
incident whose cause its own cause names (any field of the canonical group). An incident
opens only for a firing alert (a pending one waits), and not for a subgroup finding whose
group does better than the rest (one-sided: the stream's direction, or the run's
``SubgroupBias`` row of that group, says ``better``).

Severity is the highest of its firing findings, and stays there while the incident is open
(what was paged is what Alertmanager holds). Notifications (``monitor.alerting.notify``) are
queued per incident: ``firing`` when it opens, ``escalated`` once when it goes from warning to
critical, ``resolved`` when it resolves or is accepted. It resolves ("cause gone") once none
of its findings has been pending or firing for ``QUIET_WINDOWS`` consecutive grid windows of
its version (hysteresis: one quiet day does not end it), when its version is rolled back
("rolled back") or retired ("no longer live"; both from ``monitor.registry``, in the same
transaction as the alias move), or when an operator accepts it as a validated change
(``accept_incident``), which re-baselines the stratum from a chosen day
(``monitor.checks.baselines.rebaseline_stratum``).

The summary names what, where, how much and since when, from the evidence rows available:
"XR-SOUTH-1 (Ysio Max, software VF12B) since 2026-10-11: embedding MMD p<1e-4, software_version
new value VF12B; 14% of studies".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, tzinfo
from typing import Any

from sqlalchemy.orm import Session

from monitor.alerting.config import AlertingConfig
from monitor.alerting.notify import queue_incident_notifications
from monitor.alerting.rules import SEQUENTIAL_DETECTOR
from monitor.checks.baselines import rebaseline_stratum
from monitor.detect.health import DETECTOR_FAMILIES
from monitor.detect.performance import WORSE_WHEN_HIGHER
from monitor.errors import ConflictError, ValidationError, clip
from monitor.grid import local_day, local_midnight
from monitor.store.alerts import (
    OPEN_ALERT_STATES,
    AlertRecord,
    flushed_alerts,
    open_alerts_of_version,
    resolve_open_alerts_of_incident,
    resolve_open_alerts_of_version,
    set_alert_incident,
)
from monitor.store.audit import record_audit
from monitor.store.incidents import (
    IncidentInfo,
    IncidentRecord,
    add_open_incident,
    get_incident,
    incident_record,
    mark_incident_escalated,
    mark_incident_paged,
    open_incidents,
    record_acceptance,
    record_incident_run,
    resolve_incident,
)
from monitor.store.results import CheckResultInfo, CheckRunInfo
from monitor.vocabulary import STRATUM_FIELDS

log = logging.getLogger(__name__)

VERSION_FIELD = "version"
ATTRIBUTION_DETECTOR = "Attribution"
ATTRIBUTION_BASES = ("embedding", "metadata")
NOVELTY_BASIS = "novelty"  # the novel studies' composition: the cause of a novelty finding
# The families whose findings the attribution explains: what came in, and what the model made
# of it. A performance metric is the whole version's against its reads (as is a rule on the
# run's health): its cause is the version.
ATTRIBUTED_FAMILIES = ("embedding", "metadata", "prediction")
BIAS_DETECTOR = "SubgroupBias"
MISSING = "(missing)"
SAME_STUDIES = 0.05  # n_current within 5% of the top entry's: the same studies
SAME_DRIFT = 0.25  # ... and a quarter of its contribution at least: the same drift
GRID_LABEL = "1d"
QUIET_WINDOWS = 2
# A subgroup explains a version's performance drop when its gap grew (one-sided p below
# EXPLAINS_P) and the rest of the window moved the worse way by at most EXPLAINS_REST of the drop.
EXPLAINS_P = 0.05
EXPLAINS_REST = 0.5
CAUSE_GONE = "cause gone"
ROLLED_BACK = "rolled back"
NO_LONGER_LIVE = "no longer live"
ACCEPTED = "accepted as a validated change"
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
FIELD_WORDS = {"station": "station", "scanner_model": "scanner", "software_version": "software",
               "site": "site", "vendor": "vendor", "age_band": "age", "sex": "sex",
               "view": "view", VERSION_FIELD: "version"}
SHORT_DETECTOR = {"MMDDrift": "MMD", "ClassifierDrift": "classifier", "NoveltyDrift": "novelty",
                  "ScoreDrift": "score", "PositiveRateDrift": "positive rate"}
MAX_EFFECTS_IN_SUMMARY = 4


@dataclass(frozen=True)
class Cause:
    """What an incident is about. ``names``: every (field, value) that names the same studies
    (the canonical group), the cause's own included; ``share``: its share of the window's
    studies where the attribution says."""

    field: str
    value: str
    label: str
    names: frozenset[tuple[str, str]] = frozenset()
    share: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.field, self.value)


@dataclass
class GroupingReport:
    opened: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    notifications_queued: int = 0


# --- causes --------------------------------------------------------------------------------


def cause_words(field_name: str, value: str) -> str:
    """"station XR-SOUTH-1" reads as its value alone; the rest with a word first."""
    if field_name in ("station", "scanner_model"):
        return value
    return f"{FIELD_WORDS.get(field_name, field_name.replace('_', ' '))} {value}"


def stratum_label(field_name: str, value: str, others: Mapping[str, str]) -> str:
    """"XR-SOUTH-1 (SIEMENS Ysio Max, software VF12B)": the cause, then what else names the
    same studies (vendor and scanner model as one device name, then software and site)."""
    device = " ".join(others[f] for f in ("vendor", "scanner_model") if f in others)
    extra = [cause_words(f, others[f]) for f in ("software_version", "site", "station")
             if f in others]
    inside = ", ".join(part for part in (device, *extra) if part)
    head = cause_words(field_name, value)
    return f"{head} ({inside})" if inside else head


def _number(value: Any, default: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _named(entry: Mapping[str, Any]) -> bool:
    return (entry.get("field") in STRATUM_FIELDS and str(entry.get("value")) != MISSING
            and _number(entry.get("contribution")) > 0)


def canonical_cause(ranking: Sequence[Mapping[str, Any]], *, field_name: str | None = None
                    ) -> Cause | None:
    """The cause an attribution ranking names (see the module docstring), or None when it
    names no stratum. With ``field_name``, the cause around that field's leading value (a
    finding on the vendor's distribution is about the vendor that moved it, even when
    another change leads the ranking)."""
    entries = [e for e in ranking if _named(e)]
    anchors = [e for e in entries if field_name is None or e.get("field") == field_name]
    if not anchors:
        return None
    top = max(anchors, key=lambda e: _number(e.get("contribution")))
    size = "n_current" if _number(top.get("n_current")) > 0 else "n_reference"
    n_top = _number(top.get(size))
    same = [e for e in entries
            if abs(_number(e.get(size)) - n_top) <= SAME_STUDIES * n_top
            and _number(e.get("contribution")) >= SAME_DRIFT * _number(top.get("contribution"))]
    by_field: dict[str, Mapping[str, Any]] = {}
    for entry in sorted(same, key=lambda e: -_number(e.get("contribution"))):
        by_field.setdefault(str(entry["field"]), entry)
    chosen_field = next(f for f in STRATUM_FIELDS if f in by_field)
    chosen = by_field[chosen_field]
    value = str(chosen["value"])
    others = {f: str(e["value"]) for f, e in by_field.items() if f != chosen_field}
    share = chosen.get("share_current")
    return Cause(chosen_field, value, stratum_label(chosen_field, value, others),
                 frozenset((f, str(e["value"])) for f, e in by_field.items()),
                 _number(share) if share is not None else None)


def _rankings(run: CheckRunInfo, bases: Sequence[str]) -> list[list[Mapping[str, Any]]]:
    """The run's attribution rankings, ``bases`` first, then any other basis."""
    stored = {r.feature for r in run.results if r.detector == ATTRIBUTION_DETECTOR}
    found = (_ranking(run, basis) for basis in [*bases, *sorted(stored - set(bases))])
    return [ranking for ranking in found if ranking is not None]


def _ranking(run: CheckRunInfo, basis: str) -> list[Mapping[str, Any]] | None:
    row = next((r for r in run.results if r.detector == ATTRIBUTION_DETECTOR
                and r.feature == basis), None)
    ranking = (row.details or {}).get("ranking") if row is not None else None
    return [e for e in ranking if isinstance(e, Mapping)] if isinstance(ranking, list) else None


def attribution_cause(run: CheckRunInfo, *, field_name: str | None = None) -> Cause | None:
    """The cause the run's attribution names (embedding basis first), or None. With
    ``field_name`` (a finding on a stratum's own distribution), the cause around that field's
    leading value (composition basis first), or None when the ranking holds none."""
    bases = ATTRIBUTION_BASES if field_name is None else ATTRIBUTION_BASES[::-1]
    for ranking in _rankings(run, bases):
        cause = canonical_cause(ranking, field_name=field_name)
        if cause is not None:
            return cause
    return None


def version_cause(version: str) -> Cause:
    return Cause(VERSION_FIELD, version, cause_words(VERSION_FIELD, version),
                 frozenset({(VERSION_FIELD, version)}))


def finding_stream(labels: Mapping[str, Any]) -> tuple[str, str]:
    """(detector, feature) of the test behind a finding: a ``SequentialEvidence`` row's
    feature is the stream ``"{detector}/{feature}"``."""
    detector, feature = str(labels.get("detector", "")), str(labels.get("feature", ""))
    if detector == SEQUENTIAL_DETECTOR:
        inner, _, inner_feature = feature.partition("/")
        return inner, inner_feature
    return detector, feature


def subgroup_of(detector: str, feature: str) -> tuple[str, str] | None:
    """``SubgroupBias`` ``"age_band=80+:sensitivity"`` -> ("age_band", "80+")."""
    if detector != BIAS_DETECTOR:
        return None
    group = feature.rsplit(":", 1)[0]
    name, sep, value = group.partition("=")
    return (name, value) if sep and name and value else None


def subgroup_cause(field_name: str, value: str, run: CheckRunInfo) -> Cause:
    """A subgroup's cause. A subgroup on a stratum field (a scanner model, a vendor) is named
    like the stratum when the run's attribution counts its studies: the most specific field
    whose value holds exactly as many of the window's studies, and as many of the
    reference's (or the reference held none of one of the two: a new software version), is the
    cause, so a scanner whose specificity fell after its software update joins the update's
    incident, and its vendor's finding too when the vendor has no other scanner."""
    plain = Cause(field_name, value, cause_words(field_name, value),
                  frozenset({(field_name, value)}))
    if field_name not in STRATUM_FIELDS:
        return plain
    for ranking in _rankings(run, ATTRIBUTION_BASES[::-1]):
        own = next((e for e in ranking if (e.get("field"), str(e.get("value")))
                    == (field_name, value)), None)
        if own is None or _number(own.get("n_current")) <= 0:
            continue
        n_current, n_reference = _number(own.get("n_current")), _number(own.get("n_reference"))
        same = [e for e in ranking if e.get("field") in STRATUM_FIELDS
                and _number(e.get("n_current")) == n_current
                and 0 in (_number(e.get("n_reference")) - n_reference,
                          _number(e.get("n_reference")), n_reference)]
        by_field = {str(e["field"]): str(e["value"]) for e in same}
        by_field[field_name] = value
        chosen = next(f for f in STRATUM_FIELDS if f in by_field)
        others = {f: v for f, v in by_field.items() if f != chosen}
        return Cause(chosen, by_field[chosen], stratum_label(chosen, by_field[chosen], others),
                     frozenset(by_field.items()))
    return plain


def explaining_subgroup(metric: str, run: CheckRunInfo) -> tuple[str, str] | None:
    """The subgroup without which the version's drop in ``metric`` all but vanishes, or None.

    From the run's own rows: the version's change against the baseline (``PerformanceDrift``)
    and, per group, the ``SubgroupBias`` row of the same metric: the group and the rest of the
    window now, and in the baseline (the group's value less its gap). A group explains the drop
    when its gap grew worse (one-sided p < ``EXPLAINS_P``) and the rest of the window moved
    the worse way by at most ``EXPLAINS_REST`` of the version's change: a drop of the
    patients aged 80+ is theirs, a drop across every group (a degrading model) stays the
    version's. Of several, the group with the largest change in gap."""
    version = next((r for r in run.results if r.detector == "PerformanceDrift"
                    and r.feature == metric), None)
    details = (version.details or {}) if version is not None else {}
    now, then = details.get("current") or {}, details.get("baseline") or {}
    if not ("value" in now and "value" in then and details.get("worse_direction")):
        return None
    sign = 1.0 if details["worse_direction"] == "higher" else -1.0
    worse_by = sign * (_number(now["value"]) - _number(then["value"]))
    if not worse_by > 0:
        return None
    best: tuple[float, tuple[str, str]] | None = None
    for row in run.results:
        d = row.details or {}
        if row.detector != BIAS_DETECTOR or d.get("metric") != metric or \
                d.get("direction") != "worse" or not _number(d.get("p_gap_change"), 1.0) \
                < EXPLAINS_P:
            continue
        rest_then = _number(d.get("baseline_value")) - _number(d.get("baseline_gap"))
        rest_worse_by = sign * (_number(d.get("rest_value")) - rest_then)
        if rest_worse_by <= EXPLAINS_REST * worse_by:
            change = abs(_number(d.get("gap_change")))
            if best is None or change > best[0]:
                best = (change, (str(d.get("field")), str(d.get("value"))))
    return best[1] if best is not None else None


def cause_of(alert: AlertRecord, run: CheckRunInfo, run_cause: Cause | None) -> Cause:
    """A finding's cause: its subgroup; else, for a finding on the inputs or the outputs,
    the run's attribution (around the finding's own field for a stratum's distribution);
    else the version."""
    detector, feature = finding_stream(alert.labels or {})
    subgroup = subgroup_of(detector, feature)
    if subgroup is not None:
        return subgroup_cause(*subgroup, run)
    if DETECTOR_FAMILIES.get(detector) == "performance":
        group = explaining_subgroup(feature, run)
        return subgroup_cause(*group, run) if group is not None else version_cause(run.version)
    if DETECTOR_FAMILIES.get(detector) not in ATTRIBUTED_FAMILIES:
        return version_cause(run.version)
    if detector == "CategoricalDrift" and feature in STRATUM_FIELDS:
        own = attribution_cause(run, field_name=feature)
        if own is not None:
            return own
    if detector == "NoveltyDrift":
        ranking = _ranking(run, NOVELTY_BASIS)
        own = canonical_cause(ranking) if ranking is not None else None
        if own is not None:
            return own
    return run_cause or version_cause(run.version)


# --- evidence and summary ------------------------------------------------------------------


def _p_text(p: Any) -> str | None:
    if p is None or not isinstance(p, int | float) or not math.isfinite(float(p)):
        return None
    return "p<1e-4" if p < 1e-4 else f"p={p:.2g}"


def _share(value: Any) -> str:
    return f"{_number(value):.0%}"


def effect_text(detector: str, feature: str, family: str, details: Mapping[str, Any],
                p_value: Any, cause: tuple[str, str] | None = None) -> str:
    """How much, in words, from the test's own result (``details``) where the run has it;
    a new value of the incident's own ``cause`` field is named alone."""
    p = _p_text(p_value)
    if detector == BIAS_DETECTOR:
        group, _, metric = feature.rpartition(":")
        now = details.get("group_value")
        rest = details.get("rest_value")
        text = f"{group} {metric}"
        if now is not None and rest is not None:
            text += f" {_share(now)} vs {_share(rest)} for the rest"
        change, ci = details.get("gap_change"), details.get("gap_change_ci")
        if change is not None:
            # in the direction in which the metric gets worse: + is worse
            sign = 1.0 if WORSE_WHEN_HIGHER.get(metric, False) else -1.0
            worse = sign * _number(change)
            text += (f", gap {abs(worse) * 100:.0f} pts {'worse' if worse > 0 else 'better'} "
                     "than in the baseline")
            if isinstance(ci, list | tuple) and len(ci) == 2:
                low, high = sorted(sign * _number(c) * 100 for c in ci)
                text += f" (95% CI {low:+.0f} to {high:+.0f})"
        elif details.get("gap") is not None:
            text += f", gap {_number(details['gap']) * 100:+.0f} pts"
        return f"{text} {p}" if p else text
    if family == "performance":
        baseline, current = details.get("baseline"), details.get("current")
        if isinstance(baseline, Mapping) and isinstance(current, Mapping) and \
                baseline.get("value") is not None and current.get("value") is not None:
            text = f"{feature} {_share(baseline['value'])} -> {_share(current['value'])}"
            return f"{text} ({p})" if p else text
    if detector == "CategoricalDrift":
        new = details.get("new_categories")
        if isinstance(new, Mapping) and new:
            values = [str(v) for v in new]
            if cause is not None and cause[0] == feature and cause[1] in values:
                values = [cause[1]]
            return f"{feature} new value {', '.join(values[:2])}"
    if detector == "NumericDrift":
        ref, cur = details.get("reference_quantiles"), details.get("current_quantiles")
        if isinstance(ref, Mapping) and isinstance(cur, Mapping) and \
                ref.get("p50") is not None and cur.get("p50") is not None:
            return f"{feature} median {_number(ref['p50']):.4g} -> {_number(cur['p50']):.4g}"
    if detector == "PositiveRateDrift" and details.get("reference_rate") is not None \
            and details.get("current_rate") is not None:
        return (f"positive rate {_share(details['reference_rate'])} -> "
                f"{_share(details['current_rate'])}")
    name = SHORT_DETECTOR.get(detector, detector)
    what = f"{family} {name}" if family == "embedding" else f"{feature} {name}"
    return f"{what} {p}" if p else what


def finding_evidence(alert: AlertRecord, run: CheckRunInfo,
                     results: Mapping[tuple[str, str], CheckResultInfo],
                     cause: tuple[str, str] | None = None) -> dict[str, Any]:
    """One evidence row of an incident (whose cause is ``cause``): what the finding's rule
    saw in this run."""
    labels = alert.labels or {}
    detector, feature = finding_stream(labels)
    matched = results.get((str(labels.get("detector", "")), str(labels.get("feature", ""))))
    raw = results.get((detector, feature))
    matched_details = dict(matched.details or {}) if matched is not None else {}
    raw_details = dict(raw.details or {}) if raw is not None else {}
    sequential = matched_details if matched_details.get("family") == "sequential" else {}
    family = str(sequential.get("of_family") or raw_details.get("family")
                 or matched_details.get("family") or labels.get("category", ""))
    p_value = sequential.get("daily_p") if sequential else (
        matched.p_value if matched is not None else None)
    since = sequential.get("since") or run.window_start.date().isoformat()
    row: dict[str, Any] = {
        "alert_id": alert.id, "rule": alert.rule, "severity": alert.severity,
        "state": alert.state, "detector": detector, "feature": feature,
        "stream": f"{detector}/{feature}", "family": family,
        "level": sequential.get("level"),
        "statistic": matched.statistic if matched is not None else None,
        "threshold": matched.threshold if matched is not None else None,
        "since": since, "daily_p": p_value,
        "effect": effect_text(detector, feature, family, raw_details or matched_details,
                              p_value, cause),
        "check_run_id": run.id, "window_end": run.window_end.isoformat(),
    }
    if detector == BIAS_DETECTOR:
        source = raw_details or matched_details
        row["direction"] = sequential.get("direction") or source.get("direction")
        for key in ("group_value", "rest_value", "gap", "gap_change", "gap_change_ci",
                    "baseline_gap"):
            if source.get(key) is not None:
                row[key] = source[key]
    elif family == "performance":
        source = raw_details or matched_details
        for key in ("baseline", "current"):
            if isinstance(source.get(key), Mapping):
                row[key] = {k: source[key].get(k) for k in ("value", "ci_low", "ci_high", "n")}
    return row


def _strength(row: Mapping[str, Any]) -> tuple[int, float]:
    level = {"page": 2, "warning": 1}.get(str(row.get("level")), 0)
    statistic, threshold = _number(row.get("statistic")), _number(row.get("threshold"))
    return (max(level, SEVERITY_RANK.get(str(row.get("severity")), 0)),
            statistic / threshold if threshold > 0 else statistic)


def summarise(incident: IncidentRecord, evidence: Sequence[Mapping[str, Any]],
              share: float | None) -> str:
    """What, where, how much and since when, in one line."""
    effects: list[str] = []
    for row in sorted(evidence, key=_strength, reverse=True):
        text = str(row.get("effect") or "")
        if text and text not in effects:
            effects.append(text)
    shown = ", ".join(effects[:MAX_EFFECTS_IN_SUMMARY])
    if len(effects) > MAX_EFFECTS_IN_SUMMARY:
        shown += f" and {len(effects) - MAX_EFFECTS_IN_SUMMARY} more"
    since = (f" since {incident.first_evidence_day.isoformat()}"
             if incident.first_evidence_day is not None else "")
    text = f"{incident.cause_label}{since}: {shown or 'no evidence in words'}"
    if share is not None and incident.cause_field in STRATUM_FIELDS:
        text += f"; {share:.0%} of studies"
    return text


# --- grouping ------------------------------------------------------------------------------


def _matching(incidents: Iterable[IncidentRecord], cause: Cause) -> IncidentRecord | None:
    """The open incident of this cause, else one whose cause the canonical group names."""
    incidents = list(incidents)
    exact = next((i for i in incidents if (i.cause_field, i.cause_value) == cause.key), None)
    if exact is not None:
        return exact
    return next((i for i in incidents if (i.cause_field, i.cause_value) in cause.names), None)


def _does_better(alert: AlertRecord, results: Mapping[tuple[str, str], CheckResultInfo]
                 ) -> bool:
    """A subgroup finding of the default path whose group does better than the rest: the
    stream's own ``direction``, or today's ``SubgroupBias`` row of the group."""
    labels = alert.labels or {}
    if labels.get("detector") != SEQUENTIAL_DETECTOR:
        return False
    detector, feature = finding_stream(labels)
    if detector != BIAS_DETECTOR:
        return False
    stream = results.get((SEQUENTIAL_DETECTOR, f"{detector}/{feature}"))
    raw = results.get((detector, feature))
    for row in (stream, raw):
        direction = (row.details or {}).get("direction") if row is not None else None
        if direction is not None:
            return bool(direction == "better")
    return False


def _rank(severity: str) -> int:
    return SEVERITY_RANK.get(severity, 0)


def _is_grid_window(run: CheckRunInfo, incident: IncidentRecord) -> bool:
    """A new grid window of the version (one the incident has not counted yet)."""
    return run.window_label == GRID_LABEL and (
        incident.last_window_end is None or run.window_end > incident.last_window_end)


def _file(session: Session, alert: AlertRecord, incidents: dict[int, IncidentRecord],
          run: CheckRunInfo, run_cause: Cause | None,
          results: Mapping[tuple[str, str], CheckResultInfo], report: GroupingReport,
          now: datetime) -> IncidentRecord | None:
    """The open incident an open finding belongs to: the one it is filed under, else that of
    its cause, opened (for a firing finding that does not do better) if there is none yet.
    Returns None for a finding that stays out of every incident."""
    incident = incidents.get(alert.incident_id) if alert.incident_id is not None else None
    if incident is not None:
        return incident
    cause = cause_of(alert, run, run_cause)
    incident = _matching(incidents.values(), cause)
    if incident is None:
        if alert.state != "firing" or _does_better(alert, results):
            set_alert_incident(session, alert.id, None)
            return None
        incident = add_open_incident(session, model=run.model, version=run.version,
                                     cause_field=cause.field, cause_value=cause.value,
                                     cause_label=cause.label, severity=alert.severity, now=now)
        if incident.id not in incidents:
            incidents[incident.id] = incident
            report.opened.append(incident.id)
    set_alert_incident(session, alert.id, incident.id)
    return incident


def group_run(session: Session, run: CheckRunInfo, config: AlertingConfig, *,
              now: datetime) -> GroupingReport:
    """File the version's open findings under incidents, update their evidence, severity
    and summary, resolve those whose cause is gone and queue the notifications, all in the
    caller's transaction (see the module docstring)."""
    report = GroupingReport()
    results = {(r.detector, r.feature): r for r in run.results}
    findings = open_alerts_of_version(session, model=run.model, version=run.version)
    incidents = {i.id: i for i in open_incidents(session, model=run.model, version=run.version)}
    run_cause = attribution_cause(run)
    share_today: dict[int, float] = {}
    for alert in findings:
        incident = _file(session, alert, incidents, run, run_cause, results, report, now)
        if incident is None:
            continue
        share = _share_today(run, incident)
        if share is not None:
            share_today[incident.id] = share
    findings = flushed_alerts(session, [alert.id for alert in findings])
    for incident in incidents.values():
        members = [a for a in findings if a.incident_id == incident.id]
        _update(session, incident, members, run, results, share_today.get(incident.id),
                config, report, now, opened=incident.id in report.opened)
    return report


def _share_today(run: CheckRunInfo, incident: IncidentRecord) -> float | None:
    """The share of the window's studies that the incident's stratum holds, where the run's
    attribution ranks it."""
    if incident.cause_field not in STRATUM_FIELDS:
        return None
    for ranking in _rankings(run, ATTRIBUTION_BASES[::-1]):
        for entry in ranking:
            if (entry.get("field"), str(entry.get("value"))) == (
                    incident.cause_field, incident.cause_value) and \
                    entry.get("share_current") is not None:
                return _number(entry["share_current"])
    return None


def _evidence_rows(incident: IncidentRecord, members: list[AlertRecord], run: CheckRunInfo,
                   results: Mapping[tuple[str, str], CheckResultInfo], share: float | None
                   ) -> list[dict[str, Any]]:
    """The incident's evidence after the run: a new row for each member the run saw (or that
    has none yet), the state of each, resolved for a finding no longer open; open ones first,
    then the strongest."""
    evidence = {int(row["alert_id"]): dict(row) for row in incident.evidence
                if isinstance(row, Mapping) and row.get("alert_id") is not None}
    for alert in members:
        if alert.last_check_run_id == run.id or alert.id not in evidence:
            row = finding_evidence(alert, run, results,
                                   (incident.cause_field, incident.cause_value))
            if share is not None:
                row["share"] = share
            evidence[alert.id] = row
        evidence[alert.id]["state"] = alert.state
    open_ids = {a.id for a in members}
    for alert_id, row in evidence.items():
        if alert_id not in open_ids and row.get("state") in OPEN_ALERT_STATES:
            row["state"] = "resolved"
    return sorted(evidence.values(), key=lambda r: (r.get("state") not in OPEN_ALERT_STATES,
                                                   [-x for x in _strength(r)],
                                                   int(r["alert_id"])))


def _first_evidence_day(incident: IncidentRecord, rows: Sequence[Mapping[str, Any]]
                        ) -> date | None:
    """The earliest ``since`` the incident has seen."""
    days = [d for d in (_as_date(r.get("since")) for r in rows) if d is not None]
    if days and (incident.first_evidence_day is None or min(days) < incident.first_evidence_day):
        return min(days)
    return incident.first_evidence_day


def _severity(incident: IncidentRecord, members: Sequence[AlertRecord]) -> str:
    """The highest severity of the firing members, if above the incident's (it never
    drops while the incident is open)."""
    firing = [a for a in members if a.state == "firing"]
    if firing:
        highest = max((a.severity for a in firing), key=_rank)
        if _rank(highest) > _rank(incident.severity):
            return highest
    return incident.severity


def _record_run(session: Session, incident: IncidentRecord, members: list[AlertRecord],
                run: CheckRunInfo, results: Mapping[tuple[str, str], CheckResultInfo],
                share: float | None, now: datetime) -> IncidentRecord:
    """Write the run's evidence, severity, summary and quiet windows on the incident."""
    rows = _evidence_rows(incident, members, run, results, share)
    first_day = _first_evidence_day(incident, rows)
    latest_share = share if share is not None else next(
        (r.get("share") for r in sorted(rows, key=lambda r: str(r.get("window_end", "")),
                                        reverse=True) if r.get("share") is not None), None)
    summary = summarise(replace(incident, first_evidence_day=first_day),
                        [r for r in rows if r.get("state") in OPEN_ALERT_STATES] or rows,
                        latest_share)
    quiet = incident.quiet_windows
    if _is_grid_window(run, incident):
        quiet = 0 if members else quiet + 1
    window_end = (run.window_end if incident.last_window_end is None
                  else max(incident.last_window_end, run.window_end))
    return record_incident_run(session, incident.id, evidence=rows, summary=summary,
                               severity=_severity(incident, members),
                               first_evidence_day=first_day, quiet_windows=quiet,
                               check_run_id=run.id, window_end=window_end, now=now)


def _update(session: Session, incident: IncidentRecord, members: list[AlertRecord],
            run: CheckRunInfo, results: Mapping[tuple[str, str], CheckResultInfo],
            share: float | None, config: AlertingConfig, report: GroupingReport,
            now: datetime, *, opened: bool) -> None:
    """One incident after the run: its evidence written, then paged (just opened) or
    escalated (once), notified, and resolved after ``QUIET_WINDOWS`` quiet windows."""
    before = incident.severity
    incident = _record_run(session, incident, members, run, results, share, now)
    if opened:
        incident = mark_incident_paged(session, incident.id, now=now)
        log.info("incident %d opened: %s", incident.id, incident.summary)
    elif _rank(incident.severity) > _rank(before) and incident.escalated_at is None:
        incident = mark_incident_escalated(session, incident.id, now=now)
        report.escalated.append(incident.id)
        report.notifications_queued += queue_incident_notifications(
            session, incident, event="escalated", config=config, now=now)
        log.info("incident %d escalated to %s", incident.id, incident.severity)
    # once per incident and channel (an escalation counts): at its opening, or once a
    # silence that held it back has ended
    report.notifications_queued += queue_incident_notifications(
        session, incident, event="firing", config=config, now=now)
    if incident.quiet_windows >= QUIET_WINDOWS:
        report.notifications_queued += resolve(session, incident, reason=CAUSE_GONE,
                                               config=config, now=now)
        report.resolved.append(incident.id)


def _as_date(value: Any) -> date | None:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


# --- resolving and accepting ---------------------------------------------------------------


def resolve(session: Session, incident: IncidentRecord, *, reason: str,
            config: AlertingConfig, now: datetime, state: str = "resolved") -> int:
    """End an open incident (``state`` resolved or accepted) with ``reason`` and queue its
    ``resolved`` notification; returns how many notifications were queued."""
    incident = resolve_incident(session, incident.id, state=state, reason=reason, now=now)
    queued = 0
    if incident.paged_at is not None:
        queued = queue_incident_notifications(session, incident, event="resolved",
                                              config=config, now=now)
    log.info("incident %d %s: %s", incident.id, state, reason)
    return queued


def resolve_version_incidents(session: Session, *, model: str, version: str, reason: str,
                              config: AlertingConfig | None = None,
                              now: datetime | None = None) -> list[int]:
    """A version that is rolled back or no longer live: its open incidents resolve with
    ``reason`` (notified) and its open findings with them, in the caller's transaction (the
    registry's, with the alias move). Returns the incidents' ids."""
    config = config or AlertingConfig()
    now = now or datetime.now(UTC)
    resolve_open_alerts_of_version(session, model=model, version=version, now=now)
    done = []
    for incident in open_incidents(session, model=model, version=version):
        resolve(session, incident, reason=reason, config=config, now=now)
        done.append(incident.id)
    return done


def accept_incident(session: Session, incident_id: int, *, actor: str, since: date,
                    reason: str | None, config: AlertingConfig, zone: tzinfo,
                    max_studies: int | None = None, now: datetime | None = None
                    ) -> IncidentInfo:
    """An operator accepts an open incident whose cause is a stratum as a validated change:
    the version gets a new baseline in which the stratum's studies from ``since`` (a local
    day in ``zone``) replace its old ones (``monitor.checks.baselines.rebaseline_stratum``; the
    sequential history restarts on it), the incident becomes ``accepted`` (who, why, since),
    its open findings resolve, its ``resolved`` notification is queued and the audit log
    records it, all in the caller's transaction. Refused (ConflictError) for an incident
    that is not open or whose cause is not a stratum; InsufficientDataError when the stratum
    has too few studies from ``since`` yet."""
    if reason is None or not reason.strip():
        raise ValidationError(f"reason is required to accept incident {incident_id} "
                              f"(got {reason!r})", field="reason")
    now = now or datetime.now(UTC)
    if since > local_day(now, zone):
        raise ValidationError(f"since {since.isoformat()} is in the future", field="since")
    incident = incident_record(session, incident_id)
    if incident.state != "open":
        raise ConflictError(f"incident {incident_id} is {incident.state}, not open: only an "
                            "open incident can be accepted")
    if incident.cause_field not in STRATUM_FIELDS:
        raise ConflictError(
            f"incident {incident_id}'s cause is {clip(incident.cause_label)} "
            f"({incident.cause_field}={clip(incident.cause_value)}), not a stratum: only a "
            f"change of one of {', '.join(STRATUM_FIELDS)} can be accepted as validated")
    baseline, old = rebaseline_stratum(
        session, model=incident.model, version=incident.model_version,
        field=incident.cause_field, value=incident.cause_value,
        since=local_midnight(since, zone), actor=actor, reason=reason.strip(),
        max_studies=max_studies, now=now)
    record_acceptance(session, incident.id, actor=actor, reason=reason.strip(), since=since,
                      now=now)
    resolve_open_alerts_of_incident(session, incident.id, now=now)
    resolve(session, incident, reason=ACCEPTED, config=config, now=now, state="accepted")
    record_audit(session, actor=actor, action="accept_incident", model=incident.model,
                 model_version=incident.model_version, reason=reason.strip(), now=now,
                 details={"incident_id": incident.id, "cause": incident.cause_label,
                          "cause_field": incident.cause_field,
                          "cause_value": incident.cause_value, "since": since.isoformat(),
                          "baseline_id": baseline.id, "previous_baseline_id": old.id,
                          "n_studies": baseline.n_studies})
    return get_incident(session, incident.id)
