"""A real Alertmanager (Debian's ``prometheus-alertmanager``) on loopback receives the
service's incident when the simulator's software-update episode is checked, and passes it on
to a webhook receiver started by the test; the resolution follows the same way."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from monitor.alerting import engine
from monitor.alerting.config import parse_config
from monitor.runtime import Runtime
from tests.alerting.support import (
    HttpReceiver,
    http_receiver,
    result,
    running_alertmanager,
    store_run,
)
from tests.simdb import (
    PRODUCTION,
    SimulatedTemplate,
)

pytestmark = pytest.mark.server


@dataclass
class RunningAlertmanager:
    url: str
    receiver: HttpReceiver


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[RunningAlertmanager]:
    with http_receiver() as receiver, running_alertmanager({
        "route": {"receiver": "test", "group_by": ["alertname", "model"],
                  "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "test", "webhook_configs": [
            {"url": f"{receiver.url}/alertmanager", "send_resolved": True}]}],
    }, tmp_path) as url:
        yield RunningAlertmanager(url, receiver)


def test_alertmanager_receives_the_software_update_alert(
        alertmanager: RunningAlertmanager, simulated_runtime: Runtime,
        simulated_template: SimulatedTemplate) -> None:
    config = parse_config({
        "rules": [{"name": "ScannerSoftwareChanged", "detector": "CategoricalDrift",
                   "feature": "software_version", "condition": "p_value < 0.01",
                   "severity": "warning", "labels": {"team": "imaging-ai"}}],
        "notifications": {"alertmanager": [{"url": alertmanager.url}],
                          "resend_interval": "1m", "external_url": "http://monitor:8000"},
    })
    clean = simulated_template.check_run_ids["clean"]
    assert engine.process_check_run(simulated_runtime, clean, config=config).firing == ()

    run_id = simulated_template.check_run_ids["software-update"]
    report = engine.process_check_run(simulated_runtime, run_id, config=config)
    assert len(report.firing) == 1
    (incident_id,) = report.incidents_opened
    assert report.delivery is not None and report.delivery.sent == 1

    # Alertmanager's own API holds the incident with our labels
    alerts = httpx.get(f"{alertmanager.url}/api/v2/alerts", timeout=5).json()
    (held,) = [a for a in alerts if a["labels"]["alertname"] == "MonitorIncident"]
    assert held["labels"]["model"] == "cxr-triage"
    assert held["labels"]["model_version"] == PRODUCTION
    assert held["labels"]["incident_id"] == str(incident_id)
    assert held["labels"]["team"] == "imaging-ai"  # the finding's rule routes its incident
    assert held["labels"]["severity"] == "warning"
    assert held["status"]["state"] == "active"
    assert held["generatorURL"] == f"http://monitor:8000/v1/incidents/{incident_id}"
    assert held["annotations"]["runbook_url"] == "docs/runbooks/ScannerSoftwareChanged.md"
    assert held["annotations"]["dashboard_url"] == "http://127.0.0.1:8501/alerts"

    # and passes it on to its webhook receiver
    firing = alertmanager.receiver.wait_for(
        lambda r: any(x.body["status"] == "firing" for x in r))
    notified = next(x.body for x in firing if x.body["status"] == "firing")
    assert notified["groupLabels"]["alertname"] == "MonitorIncident"
    (passed,) = notified["alerts"]
    assert passed["labels"]["incident_id"] == str(incident_id)
    assert "software_version" in passed["annotations"]["summary"]

    # two later windows without the finding resolve it, in Alertmanager too
    version_id = simulated_runtime_version_id(simulated_runtime)
    for day in (40, 41):
        later = store_run(simulated_runtime, version_id, day=day, results=[
            result("CategoricalDrift", "software_version", p_value=0.6)])
        resolved = engine.process_check_run(simulated_runtime, later, config=config)
    assert resolved.incidents_resolved == (incident_id,)
    done = alertmanager.receiver.wait_for(
        lambda r: any(x.body["status"] == "resolved" for x in r))
    assert next(x.body for x in done if x.body["status"] == "resolved")["alerts"][0][
        "labels"]["incident_id"] == str(incident_id)


def simulated_runtime_version_id(runtime: Runtime) -> int:
    from monitor.store import repo
    from monitor.store.db import session_scope

    with session_scope(runtime.sessions) as session:
        return repo.get_model_version(session, "cxr-triage", PRODUCTION).id
