"""Daily grid checks for the dashboard tests, written straight into the store: eight days of
1.4.0 (in the simulated deployment: days 15 to 22, which ``tests.simdb`` does not check), each
with its per-stream daily results and the ``SequentialEvidence`` rows that
``monitor.detect.sequential`` makes of them, so the Drift page has sequential evidence to draw
whatever the checks of the simulated template store.

The daily z-values are fixed, not drawn: the embedding family pages from the third day, the
metadata family warns and then pages, the bias family warns on the last day and the
prediction family stays quiet.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from scipy.stats import norm
from sqlalchemy import select

from monitor.detect.sequential import DailyEvidence, evaluate, sequential_health
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.models import ModelVersion
from monitor.store.results import store_check_run
from tests.simdb import MODEL, PRODUCTION

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
