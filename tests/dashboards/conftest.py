"""A dashboard over the small simulated deployment (``tests.simdb``): its checks, the alerts
they raise (evaluated at each window's end, as a live service would) and one pending rollback
recommendation; and the ``MONITOR_*`` environment the dashboard reads its settings from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from monitor.alerting import engine
from monitor.alerting.config import AlertingConfig, RollbackPolicy
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.models import CheckRun, RollbackRecommendation
from tests.conftest import TEST_SECRET
from tests.simdb import SimulatedTemplate

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
OPERATOR, OPERATOR_TOKEN = "olivia", "operator-token-1234"
VIEWER, VIEWER_TOKEN = "victor", "viewer-token-5678"


@dataclass
class DashboardData:
    runtime: Runtime
    template: SimulatedTemplate
    recommendation_id: int

    @property
    def database_url(self) -> str:
        return self.runtime.settings.database_url


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
    return DashboardData(simulated_runtime, simulated_template, raise_alerts(simulated_runtime))


def dashboard_environment(data: DashboardData) -> dict[str, str]:
    settings = data.runtime.settings
    return {
        "MONITOR_DATABASE_URL": settings.database_url,
        "MONITOR_SECRET_KEY": TEST_SECRET,
        "MONITOR_SECRET_KEY_FILE": str(settings.secret_key_file),
        "MONITOR_REPORTS_DIR": str(settings.reports_dir),
        "MONITOR_CHECK_INTERVAL_S": "0",
        "MONITOR_API_TOKENS": json.dumps({OPERATOR: OPERATOR_TOKEN, VIEWER: VIEWER_TOKEN}),
        "MONITOR_OPERATORS": json.dumps([OPERATOR]),
        "DO_NOT_TRACK": "1",
    }


@pytest.fixture
def dashboard_env(dashboard_data: DashboardData, monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[DashboardData]:
    """The dashboard's settings in the environment (what `monitor dashboard` passes on)."""
    for name, value in dashboard_environment(dashboard_data).items():
        monkeypatch.setenv(name, value)
    yield dashboard_data
