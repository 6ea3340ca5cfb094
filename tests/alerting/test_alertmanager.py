"""A real Alertmanager (Debian's ``prometheus-alertmanager``) on loopback receives the
service's alert when the simulator's software-update episode is checked, and passes it on to
a webhook receiver started by the test; the resolution follows the same way."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from monitor.alerting import engine
from monitor.alerting.config import parse_config
from monitor.runtime import Runtime
from tests.alerting.support import HttpReceiver, http_receiver, result, store_run
from tests.conftest import require_server
from tests.servers import free_port, stop_process
from tests.simdb import (
    PRODUCTION,
    SimulatedTemplate,
)

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
pytestmark = pytest.mark.server


@dataclass
class RunningAlertmanager:
    url: str
    receiver: HttpReceiver


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[RunningAlertmanager]:
    binary = shutil.which("prometheus-alertmanager") or ALERTMANAGER
    require_server(Path(binary).exists(), f"Alertmanager ({ALERTMANAGER})")
    with http_receiver() as receiver:
        port = free_port()
        config = tmp_path / "alertmanager.yml"
        config.write_text(yaml.safe_dump({
            "route": {"receiver": "test", "group_by": ["alertname", "model"],
                      "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "test", "webhook_configs": [
                {"url": f"{receiver.url}/alertmanager", "send_resolved": True}]}],
        }))
        log = (tmp_path / "alertmanager.log").open("wb")
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise AssertionError("Alertmanager exited: "
                                         + (tmp_path / "alertmanager.log").read_text())
                try:
                    if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("Alertmanager not ready after 30 s")
                time.sleep(0.1)
            yield RunningAlertmanager(url, receiver)
        finally:
            stop_process(process, timeout_s=10)
            log.close()


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
    (alert_id,) = report.firing
    assert report.delivery is not None and report.delivery.sent == 1

    # Alertmanager's own API holds the alert with our labels
    alerts = httpx.get(f"{alertmanager.url}/api/v2/alerts", timeout=5).json()
    (held,) = [a for a in alerts if a["labels"]["alertname"] == "ScannerSoftwareChanged"]
    assert held["labels"]["model"] == "cxr-triage"
    assert held["labels"]["model_version"] == PRODUCTION
    assert held["labels"]["feature"] == "software_version"
    assert held["labels"]["team"] == "imaging-ai"
    assert held["status"]["state"] == "active"
    assert held["generatorURL"] == f"http://monitor:8000/v1/alerts/{alert_id}"

    # and passes it on to its webhook receiver
    firing = alertmanager.receiver.wait_for(
        lambda r: any(x.body["status"] == "firing" for x in r))
    notified = next(x.body for x in firing if x.body["status"] == "firing")
    assert notified["groupLabels"]["alertname"] == "ScannerSoftwareChanged"
    (passed,) = notified["alerts"]
    assert passed["labels"]["feature"] == "software_version"
    assert "software_version" in passed["annotations"]["summary"]

    # a later window without the finding resolves it, in Alertmanager too
    version_id = simulated_runtime_version_id(simulated_runtime)
    later = store_run(simulated_runtime, version_id, day=40, results=[
        result("CategoricalDrift", "software_version", p_value=0.6)])
    resolved = engine.process_check_run(simulated_runtime, later, config=config)
    assert [t.after for t in resolved.transitions] == ["resolved"]
    done = alertmanager.receiver.wait_for(
        lambda r: any(x.body["status"] == "resolved" for x in r))
    assert next(x.body for x in done if x.body["status"] == "resolved")["alerts"][0][
        "labels"]["alertname"] == "ScannerSoftwareChanged"


def simulated_runtime_version_id(runtime: Runtime) -> int:
    from monitor.store import repo
    from monitor.store.db import session_scope

    with session_scope(runtime.sessions) as session:
        return repo.get_model_version(session, "cxr-triage", PRODUCTION).id
