"""The shipped Alertmanager configs, run by a real Alertmanager on loopback: a critical alert
on one version of a model inhibits that version's warnings and no other version's.

The alerts are the service's own: fired by the alerting engine from stored check runs and
posted by its Alertmanager channel, so the labels are the ones the service really sends.
Alertmanager's API (``GET /api/v2/alerts``) reports each alert's ``inhibitedBy``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from monitor.alerting import engine
from monitor.alerting.config import parse_config
from monitor.runtime import Runtime
from tests.alerting.support import WAIT_S, add_version, result, running_alertmanager, store_run

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIGS = (ROOT / "alerts" / "alertmanager.example.yml",
                   ROOT / "docker" / "alertmanager.yml")
VERSION_A, VERSION_B = "1.4.0", "1.5.0"
RULES = [
    {"name": "performance-drop", "detector": "PerformanceDrift", "feature": "sensitivity",
     "condition": "p_value < 0.01", "severity": "critical"},
    {"name": "metadata-drift", "detector": "CategoricalDrift", "feature": "software_version",
     "condition": "p_value < 0.01", "severity": "warning"},
]


def without_integrations(config: dict[str, Any]) -> dict[str, Any]:
    """The config's routes and inhibit rules as shipped, its receivers kept by name only (no
    mail or webhook leaves the test)."""
    return {**config, "global": {"resolve_timeout": "5m"},
            "receivers": [{"name": receiver["name"]} for receiver in config["receivers"]]}


def fire(runtime: Runtime, alertmanager_url: str) -> None:
    """Version A: a critical (sensitivity drop) and a warning (software version); version B:
    the same warning only. Each is posted to Alertmanager by the service."""
    config = parse_config({
        "rules": RULES,
        "notifications": {"alertmanager": [{"url": alertmanager_url}],
                          "external_url": "http://monitor:8000"},
    })
    warning = result("CategoricalDrift", "software_version", p_value=1e-6)
    critical = result("PerformanceDrift", "sensitivity", p_value=1e-6, family="performance")
    for version, results in ((VERSION_A, [critical, warning]), (VERSION_B, [warning])):
        run = store_run(runtime, add_version(runtime, version), day=10, results=results)
        report = engine.process_check_run(runtime, run, config=config)
        assert report.delivery is not None and report.delivery.sent == len(results)


def held_alerts(url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Alertmanager's alerts by (alertname, model_version)."""
    alerts = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
    return {(a["labels"]["alertname"], a["labels"]["model_version"]): a for a in alerts}


def once_inhibited(url: str, key: tuple[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    """The alerts, read once Alertmanager reports ``key`` inhibited (its inhibitor picks up
    new source alerts asynchronously)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        alerts = held_alerts(url)
        if key in alerts and alerts[key]["status"]["inhibitedBy"]:
            return alerts
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} never inhibited: {alerts}")
        time.sleep(0.1)


@pytest.mark.parametrize("shipped", SHIPPED_CONFIGS, ids=lambda p: p.parent.name)
def test_a_critical_on_one_version_inhibits_only_that_versions_warnings(
        shipped: Path, sqlite_runtime: Runtime, tmp_path: Path) -> None:
    config = without_integrations(yaml.safe_load(shipped.read_text()))
    with running_alertmanager(config, tmp_path) as url:
        fire(sqlite_runtime, url)
        alerts = once_inhibited(url, ("metadata-drift", VERSION_A))

    critical_a = alerts[("performance-drop", VERSION_A)]
    assert critical_a["status"] == {"state": "active", "inhibitedBy": [], "silencedBy": []}
    warning_a = alerts[("metadata-drift", VERSION_A)]
    assert warning_a["status"]["state"] == "suppressed"
    assert warning_a["status"]["inhibitedBy"] == [critical_a["fingerprint"]]
    warning_b = alerts[("metadata-drift", VERSION_B)]
    assert warning_b["status"] == {"state": "active", "inhibitedBy": [], "silencedBy": []}
    assert warning_b["labels"]["model"] == warning_a["labels"]["model"]  # the same model
    for alert in alerts.values():
        assert alert["annotations"]["runbook_url"] == (
            f"docs/runbooks/{alert['labels']['alertname']}.md")
        assert alert["annotations"]["dashboard_url"] == "http://127.0.0.1:8501/alerts"


def test_equal_on_a_label_the_alerts_lack_inhibits_every_version(
        sqlite_runtime: Runtime, tmp_path: Path) -> None:
    """Why the label names must agree: inhibiting on ``version``, a label the service's
    alerts do not carry, treats every version of the model as the same (the configs before
    they named ``model_version``)."""
    config = without_integrations(yaml.safe_load(SHIPPED_CONFIGS[1].read_text()))
    config["inhibit_rules"][0]["equal"] = ["model", "version"]
    with running_alertmanager(config, tmp_path) as url:
        fire(sqlite_runtime, url)
        alerts = once_inhibited(url, ("metadata-drift", VERSION_B))
    critical_a = alerts[("performance-drop", VERSION_A)]
    assert alerts[("metadata-drift", VERSION_B)]["status"]["inhibitedBy"] == [
        critical_a["fingerprint"]]
