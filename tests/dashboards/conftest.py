"""A dashboard over the small simulated deployment (``tests.simdb``): its checks, the alerts
they raise (evaluated at each window's end, as a live service would), one pending rollback
recommendation and three tokens in the token store (an operator, a reader, an ingester); and
the ``MONITOR_*`` environment the dashboard reads its settings from. ``evidence_env`` adds
eight daily grid checks with sequential evidence before the alerts are evaluated, and six
incidents of 1.3.0 after (``tests.dashboards.seed``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from monitor.alerting import engine
from monitor.alerting.config import AlertingConfig, RollbackPolicy
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.models import CheckRun, RollbackRecommendation
from monitor.store.tokens import add_token
from tests.conftest import TEST_SECRET
from tests.dashboards.seed import FIRST_DAY, seed_daily_evidence, seed_incidents
from tests.simdb import SimulatedTemplate

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
OPERATOR, OPERATOR_TOKEN = "olivia", "mtk_operator-token-of-olivia-0123456789abcdef"
VIEWER, VIEWER_TOKEN = "victor", "mtk_read-token-of-victor-0123456789abcdefghij"
INGESTER, INGEST_TOKEN = "scanner-gateway", "mtk_ingest-token-of-the-gateway-0123456789ab"
TOKENS = ((OPERATOR, "operator", OPERATOR_TOKEN), (VIEWER, "read", VIEWER_TOKEN),
          (INGESTER, "ingest", INGEST_TOKEN))


@dataclass
class DashboardData:
    runtime: Runtime
    template: SimulatedTemplate
    recommendation_id: int
    daily_run_ids: list[int] = field(default_factory=list)  # seeded grid days, in day order
    incident_ids: dict[str, int] = field(default_factory=dict)  # seeded incidents by name

    @property
    def database_url(self) -> str:
        return self.runtime.settings.database_url


def add_tokens(runtime: Runtime) -> None:
    with session_scope(runtime.sessions) as session:
        for name, role, token in TOKENS:
            add_token(session, name=name, role=role, token=token, actor="tests")


def raise_alerts(runtime: Runtime) -> int:
    """Evaluate the alert rules on every check run in window order, at its window's end, with
    a policy that recommends a rollback on a critical alert; returns the recommendation id."""
    config = AlertingConfig(rollback_policies=[
        RollbackPolicy(name="critical-sustained", firing_windows=1)])
    with session_scope(runtime.sessions) as session:
        runs = session.execute(select(CheckRun.id, CheckRun.window_end)
                               .order_by(CheckRun.window_end)).all()
    for run_id, window_end in runs:
        engine.process_check_run(runtime, run_id, config=config, deliver=False, now=window_end)
    with session_scope(runtime.sessions) as session:
        found = session.scalar(select(RollbackRecommendation.id).where(
            RollbackRecommendation.status == "pending"))
    assert found is not None, "the simulated alerts should yield a rollback recommendation"
    return int(found)


@pytest.fixture
def dashboard_data(simulated_runtime: Runtime,
                   simulated_template: SimulatedTemplate) -> DashboardData:
    recommendation_id = raise_alerts(simulated_runtime)
    add_tokens(simulated_runtime)
    return DashboardData(simulated_runtime, simulated_template, recommendation_id)


@pytest.fixture
def evidence_data(simulated_runtime: Runtime,
                  simulated_template: SimulatedTemplate) -> DashboardData:
    daily = seed_daily_evidence(simulated_runtime, simulated_template.day(FIRST_DAY))
    recommendation_id = raise_alerts(simulated_runtime)
    incidents = seed_incidents(simulated_runtime, simulated_template.start)
    add_tokens(simulated_runtime)
    return DashboardData(simulated_runtime, simulated_template, recommendation_id, daily,
                         incidents)


def dashboard_environment(data: DashboardData) -> dict[str, str]:
    settings = data.runtime.settings
    return {
        "MONITOR_DATABASE_URL": settings.database_url,
        "MONITOR_SECRET_KEY": TEST_SECRET,
        "MONITOR_SECRET_KEY_FILE": str(settings.secret_key_file),
        "MONITOR_REPORTS_DIR": str(settings.reports_dir),
        "MONITOR_CHECK_INTERVAL_S": "0",
        "DO_NOT_TRACK": "1",
    }


@pytest.fixture
def dashboard_env(dashboard_data: DashboardData, monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[DashboardData]:
    """The dashboard's settings in the environment (what `monitor dashboard` passes on)."""
    for name, value in dashboard_environment(dashboard_data).items():
        monkeypatch.setenv(name, value)
    yield dashboard_data


@pytest.fixture
def evidence_env(evidence_data: DashboardData, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[DashboardData]:
    """``dashboard_env`` with the seeded daily grid checks and incidents."""
    for name, value in dashboard_environment(evidence_data).items():
        monkeypatch.setenv(name, value)
    yield evidence_data
