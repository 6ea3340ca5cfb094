"""What the dashboard tests add to the simulated deployment, written straight into the store.

Daily grid checks: eight days of
1.4.0 (in the simulated deployment: days 15 to 22, which ``tests.simdb`` does not check), each
with its per-stream daily results and the ``SequentialEvidence`` rows that
``monitor.detect.sequential`` makes of them, so the Drift page has sequential evidence to draw
whatever the checks of the simulated template store.

The daily z-values are fixed, not drawn: the embedding family pages from the third day, the
metadata family warns and then pages, the bias family warns on the last day and the
prediction family stays quiet.

Incidents (``SEEDED_INCIDENTS``): four open ones of 1.3.0 (two critical, two warning, opened
on days chosen so that neither their ids nor their opening times give the page's order), one
resolved and one accepted, each with its evidence and one finding per evidence row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from scipy.stats import norm
from sqlalchemy import select

from monitor.detect.sequential import DailyEvidence, evaluate, sequential_health
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.models import Alert, Incident, ModelVersion
from monitor.store.results import store_check_run
from tests.simdb import MODEL, PREVIOUS, PRODUCTION

FIRST_DAY = 15  # of the simulated deployment
N_CURRENT, N_REFERENCE = 150, 700
# stream -> (family, z on each day)
DAILY_Z: dict[str, tuple[str, tuple[float, ...]]] = {
    "MMDDrift/embedding": ("embedding", (1.2, 2.6, 3.4, 3.9, 4.2, 4.0, 4.4, 4.1)),
    "ClassifierDrift/embedding": ("embedding", (0.3, 1.1, 1.9, 2.2, 2.8, 2.4, 3.0, 2.9)),
    "CategoricalDrift/vendor": ("metadata", (0.4, 1.8, 1.9, 2.3, 2.0, 2.4, 2.2, 2.5)),
    "CategoricalDrift/scanner_model": ("metadata", (0.2, 1.6, 1.7, 2.0, 1.9, 2.1, 2.0, 2.2)),
    "NumericDrift/kvp": ("metadata", (-0.4, 0.3, -1.1, 0.6, 0.1, -0.7, 0.9, -0.2)),
    "ScoreDrift/score": ("prediction", (0.5, -0.8, 0.2, 1.1, -0.3, 0.4, -1.2, 0.7)),
    "SubgroupBias/age_band=80+:sensitivity": ("bias", (-0.2, 0.4, 0.9, 1.6, 1.9, 2.1, 2.6,
                                                       2.8)),
    "SubgroupBias/age_band=0-17:sensitivity": ("bias", (0.8, -0.5, -1.3, 0.2, 0.6, -0.9, 0.1,
                                                        -0.4)),
}
N_DAYS = len(next(iter(DAILY_Z.values()))[1])


def _day_type(day: date) -> str:
    return "weekend" if day.weekday() >= 5 else "weekday"


def _daily_row(stream: str, family: str, z: float) -> dict[str, Any]:
    detector, _, feature = stream.partition("/")
    p_value = float(norm.sf(z))
    return {"detector": detector, "feature": feature, "statistic": z, "p_value": p_value,
            "threshold": 0.05, "drift": p_value < 0.05, "n_reference": N_REFERENCE,
            "n_current": N_CURRENT, "details": {"family": family}}


def seed_daily_evidence(runtime: Runtime, first_day: datetime) -> list[int]:
    """Store the eight daily checks of 1.4.0 from ``first_day`` (midnight UTC: the grid days
    of the default time zone); returns their run ids in day order. Subgroup streams get
    their sequential rows only (no daily ``SubgroupBias`` rows: the Bias page keeps showing
    the simulated template's own subgroup results)."""
    history: list[DailyEvidence] = []
    run_ids = []
    with session_scope(runtime.sessions) as session:
        version_id = session.scalar(select(ModelVersion.id).where(
            ModelVersion.model == MODEL, ModelVersion.version == PRODUCTION))
        for index in range(N_DAYS):
            start = first_day + timedelta(days=index)
            day = start.date()
            today = [DailyEvidence(stream, family, day, float(norm.sf(zs[index])), N_CURRENT,
                                   N_REFERENCE, _day_type(day))
                     for stream, (family, zs) in DAILY_Z.items()]
            history += today
            states = evaluate(history, day=day)
            health = sequential_health(states)
            results = [_daily_row(stream, family, zs[index])
                       for stream, (family, zs) in DAILY_Z.items() if family != "bias"]
            for state in states:
                result = state.to_result()
                results.append({"detector": result.detector, "feature": result.feature,
                                "statistic": result.statistic, "p_value": None,
                                "threshold": result.threshold, "drift": result.drift,
                                "n_reference": result.n_reference,
                                "n_current": result.n_current, "details": dict(result.details)})
            run_id, _ = store_check_run(session, run={
                "model_version_id": version_id, "window_kind": "time", "window_label": "1d",
                "window_start": start, "window_end": start + timedelta(days=1),
                "started_at": datetime.now(UTC), "finished_at": datetime.now(UTC),
                "status": "ok", "n_studies": N_CURRENT, "health_score": health.score,
                "health_status": health.status, "report_path": None,
            }, results=results)
            run_ids.append(run_id)
    return run_ids


# --------------------------------------------------------------------------- incidents

INCIDENT_VERSION = PREVIOUS  # never checked by tests.simdb: no incident of its own there


@dataclass(frozen=True)
class SeededIncident:
    name: str
    severity: str
    state: str
    cause_field: str
    cause_value: str
    cause_label: str
    opened_day: int  # of the simulated deployment
    first_day: int
    evidence: tuple[dict[str, Any], ...]
    summary: str
    closed_day: int | None = None


def _evidence(detector: str, feature: str, family: str, level: str, statistic: float,
              threshold: float, since_day: int, effect: str, **extra: Any
              ) -> dict[str, Any]:
    rule = "sequential-page" if level == "page" else "sequential-warning"
    return {"rule": rule, "severity": "critical" if level == "page" else "warning",
            "detector": detector, "feature": feature, "stream": f"{detector}/{feature}",
            "family": family, "level": level, "statistic": statistic, "threshold": threshold,
            "since": since_day, "effect": effect, **extra}


# In the order they are stored: the ids' order is neither the page's nor its reverse.
SEEDED_INCIDENTS = (
    SeededIncident(
        "subgroup-80+", "warning", "open", "age_band", "80+", "age 80+", 12, 11,
        (_evidence("SubgroupBias", "age_band=80+:sensitivity", "bias", "warning", 3.6, 4.1,
                   11, "age_band=80+ sensitivity 71% vs 86% for the rest, gap 11 pts worse "
                   "than in the baseline (95% CI -18 to -4)", direction="worse",
                   gap_change=-0.11),),
        "age 80+ since {since}: age_band=80+ sensitivity 71% vs 86% for the rest"),
    SeededIncident(
        "version", "critical", "open", "version", PREVIOUS, f"version {PREVIOUS}", 20, 18,
        (_evidence("PerformanceDrift", "sensitivity", "performance", "page", 4.8, 4.0, 18,
                   "sensitivity 88% -> 79% (p=0.002)", baseline={"value": 0.88},
                   current={"value": 0.79}),),
        f"version {PREVIOUS} since {{since}}: sensitivity 88% -> 79% (p=0.002)"),
    SeededIncident(
        "software-update", "critical", "open", "station", "XR-SOUTH-1",
        "XR-SOUTH-1 (SIEMENS Ysio Max, software VF12B)", 11, 10,
        (_evidence("MMDDrift", "embedding", "embedding", "page", 6.2, 3.9, 10,
                   "embedding MMD p<1e-4"),
         _evidence("NumericDrift", "kvp", "metadata", "warning", 3.7, 4.0, 10,
                   "kvp median 125 -> 110")),
        "XR-SOUTH-1 (SIEMENS Ysio Max, software VF12B) since {since}: embedding MMD p<1e-4, "
        "kvp median 125 -> 110; 14% of studies"),
    SeededIncident(
        "new-vendor", "warning", "open", "scanner_model", "FDR Smart X",
        "FDR Smart X (FUJIFILM Corporation)", 15, 14,
        (_evidence("CategoricalDrift", "scanner_model", "metadata", "warning", 3.8, 4.0, 14,
                   "scanner_model new value FDR Smart X"),),
        "FDR Smart X (FUJIFILM Corporation) since {since}: scanner_model new value FDR Smart X; "
        "9% of studies"),
    SeededIncident(
        "site-south", "warning", "resolved", "site", "south", "site south", 8, 8,
        (_evidence("CategoricalDrift", "view", "metadata", "warning", 3.7, 4.0, 8,
                   "view AP 31% -> 38%"),),
        "site south since {since}: view AP 31% -> 38%", closed_day=9),
    SeededIncident(
        "accepted-firmware", "critical", "accepted", "software_version", "VF10E",
        "software VF10E (SIEMENS Ysio Max)", 9, 9,
        (_evidence("MMDDrift", "embedding", "embedding", "page", 4.4, 3.9, 9,
                   "embedding MMD p=3e-4"),),
        "software VF10E (SIEMENS Ysio Max) since {since}: embedding MMD p=3e-4", closed_day=10),
)
ACCEPTED_BY, ACCEPT_REASON = "olivia", "firmware VF10E validated by the physics team"


def seed_incidents(runtime: Runtime, start: datetime) -> dict[str, int]:
    """Store ``SEEDED_INCIDENTS`` of 1.3.0 with one finding (alert) per evidence row, days
    counted from ``start``; returns incident ids by name."""
    def day(n: int) -> datetime:
        return start + timedelta(days=n, hours=1)

    ids: dict[str, int] = {}
    with session_scope(runtime.sessions) as session:
        for seeded in SEEDED_INCIDENTS:
            closed = day(seeded.closed_day) if seeded.closed_day is not None else None
            accepted = seeded.state == "accepted"
            evidence = [{**row, "since": (start + timedelta(days=row["since"])).date()
                         .isoformat()} for row in seeded.evidence]
            first = (start + timedelta(days=seeded.first_day)).date()
            incident = Incident(
                model=MODEL, model_version=INCIDENT_VERSION, cause_field=seeded.cause_field,
                cause_value=seeded.cause_value, cause_label=seeded.cause_label,
                state=seeded.state, severity=seeded.severity,
                opened_at=day(seeded.opened_day), first_evidence_day=first,
                paged_at=day(seeded.opened_day), resolved_at=closed,
                resolved_reason=("accepted as a validated change" if accepted
                                 else "cause gone" if closed else None),
                summary=seeded.summary.format(since=first.isoformat()),
                evidence=evidence, quiet_windows=0, updated_at=closed or day(seeded.opened_day),
                accepted_by=ACCEPTED_BY if accepted else None,
                accepted_at=closed if accepted else None,
                accept_reason=ACCEPT_REASON if accepted else None,
                accepted_since=first if accepted else None)
            session.add(incident)
            session.flush()
            ids[seeded.name] = incident.id
            for row in evidence:
                state = "firing" if seeded.state == "open" else "resolved"
                session.add(Alert(
                    key=f"seeded-{incident.id}-{row['stream']}"[:128], rule=row["rule"],
                    model=MODEL, model_version=INCIDENT_VERSION, severity=row["severity"],
                    state=state, labels={"detector": "SequentialEvidence",
                                         "feature": row["stream"], "family": "sequential"},
                    summary=f"{row['stream']} at {row['level']} since {row['since']}",
                    consecutive=2, firing_windows=2, started_at=day(seeded.first_day),
                    fired_at=day(seeded.opened_day), updated_at=closed or day(seeded.opened_day),
                    resolved_at=closed, incident_id=incident.id))
    return ids
