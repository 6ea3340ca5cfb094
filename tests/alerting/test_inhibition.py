"""The shipped Alertmanager configs, run by a real Alertmanager on loopback, holding the
service's incidents and Prometheus' own alerts together, as the compose stack does:

* a critical incident on version A inhibits A's warnings (its other incidents, Prometheus'
  slow-burn health warning for A) and none of version B's;
* each incident is its own notification group (``group_by`` names ``incident_id``).

The incidents are the service's own: opened by the alerting engine from stored grid check
runs (sequential evidence at the page or warning level, with the attribution that names the
cause) and posted by its Alertmanager channel, so the labels are the ones the service really
sends. Prometheus' alert carries what its rule gives it (alerts/prometheus/monitor-rules.yml).
Alertmanager's API (``GET /api/v2/alerts``) reports each alert's ``inhibitedBy``."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from monitor.alerting import engine
from monitor.alerting.config import parse_config
from monitor.runtime import Runtime
from tests.alerting.support import (
    MODEL,
    WAIT_S,
    add_version,
    attribution,
    rank,
    running_alertmanager,
    sequential,
    store_run,
)

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIGS = (ROOT / "alerts" / "alertmanager.example.yml",
                   ROOT / "docker" / "alertmanager.yml")
PROMETHEUS_RULES = ROOT / "alerts" / "prometheus" / "monitor-rules.yml"
VERSION_A, VERSION_B = "1.4.0", "1.5.0"
SLOW_BURN = "MonitorHealthPersistentlyLow"
STATION = "XR-SOUTH-1"
SUBGROUP = "age_band=80+"

Alert = dict[str, Any]


def without_integrations(config: dict[str, Any]) -> dict[str, Any]:
    """The config's routes and inhibit rules as shipped, its receivers kept by name only (no
    mail or webhook leaves the test)."""
    return {**config, "global": {"resolve_timeout": "5m"},
            "receivers": [{"name": receiver["name"]} for receiver in config["receivers"]]}


def open_incidents(runtime: Runtime, alertmanager_url: str) -> dict[str, set[int]]:
    """Version A: the embedding at the page level, attributed to a station (a critical
    incident), and the 80+ age band's sensitivity at the warning level (a warning incident of
    another cause); version B: the same warning only. The service posts each incident to
    Alertmanager. Returns the incident ids opened, by version."""
    config = parse_config({
        "notifications": {"alertmanager": [{"url": alertmanager_url}],
                          "external_url": "http://monitor:8000"},
    })  # the built-in rules, as the compose stack runs them
    subgroup_warning = sequential(f"SubgroupBias/{SUBGROUP}:sensitivity", "bias", "warning",
                                  direction="worse")
    runs = {
        VERSION_A: [sequential("MMDDrift/embedding", "embedding", "page"),
                    attribution(rank("station", STATION, 120, 0.6)), subgroup_warning],
        VERSION_B: [subgroup_warning],
    }
    opened: dict[str, set[int]] = {}
    for version, results in runs.items():
        run = store_run(runtime, add_version(runtime, version), day=10, results=results)
        report = engine.process_check_run(runtime, run, config=config)
        assert report.delivery is not None and report.delivery.failed == 0
        opened[version] = set(report.incidents_opened)
    assert len(opened[VERSION_A]) == 2 and len(opened[VERSION_B]) == 1
    return opened


def post_slow_burn(url: str, version: str) -> None:
    """Prometheus' slow-burn health warning for one version, labelled as its rule labels it."""
    (rule,) = [rule for group in yaml.safe_load(PROMETHEUS_RULES.read_text())["groups"]
               for rule in group["rules"] if rule["alert"] == SLOW_BURN]
    now = datetime.now(UTC)
    alert = {"labels": {"alertname": SLOW_BURN, "model": MODEL, "model_version": version,
                        **rule["labels"]},
             "annotations": {k: rule["annotations"][k] for k in ("runbook_url", "dashboard_url")},
             "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()}
    response = httpx.post(f"{url}/api/v2/alerts", json=[alert], timeout=5)
    assert response.status_code == 200, response.text


def held(url: str) -> list[Alert]:
    alerts: list[Alert] = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
    return alerts


def find(alerts: list[Alert], *, version: str, **labels: str) -> Alert:
    (found,) = [a for a in alerts if a["labels"]["model_version"] == version
                and all(a["labels"].get(k) == v for k, v in labels.items())]
    return found


def once(url: str, ready: Callable[[list[Alert]], bool]) -> list[Alert]:
    """The alerts, read once ``ready`` holds (Alertmanager's inhibitor picks up new source
    alerts asynchronously)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        alerts = held(url)
        if ready(alerts):
            return alerts
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {WAIT_S}s: {alerts}")
        time.sleep(0.1)


def suppressed(alerts: list[Alert], count: int) -> bool:
    return sum(1 for a in alerts if a["status"]["inhibitedBy"]) >= count


ACTIVE = {"state": "active", "inhibitedBy": [], "silencedBy": []}


@pytest.mark.parametrize("shipped", SHIPPED_CONFIGS, ids=lambda p: p.parent.name)
def test_a_critical_incident_inhibits_only_its_own_versions_warnings(
        shipped: Path, sqlite_runtime: Runtime, tmp_path: Path) -> None:
    config = without_integrations(yaml.safe_load(shipped.read_text()))
    with running_alertmanager(config, tmp_path) as url:
        opened = open_incidents(sqlite_runtime, url)
        for version in (VERSION_A, VERSION_B):
            post_slow_burn(url, version)
        alerts = once(url, lambda alerts: len(alerts) == 5 and suppressed(alerts, 2))
        groups = httpx.get(f"{url}/api/v2/alerts/groups", timeout=5).json()

    critical_a = find(alerts, version=VERSION_A, severity="critical")
    assert critical_a["status"] == ACTIVE
    assert critical_a["labels"]["cause"] == f"station={STATION}"
    inhibited_by_a = [critical_a["fingerprint"]]
    # Version A's warnings: its other incident and Prometheus' slow burn.
    warning_a = find(alerts, version=VERSION_A, severity="warning",
                     cause=SUBGROUP)
    assert warning_a["status"]["state"] == "suppressed"
    assert warning_a["status"]["inhibitedBy"] == inhibited_by_a
    assert find(alerts, version=VERSION_A, alertname=SLOW_BURN)["status"]["inhibitedBy"] == (
        inhibited_by_a)
    # Version B of the same model: nothing inhibits its warnings.
    warning_b = find(alerts, version=VERSION_B, cause=SUBGROUP)
    assert warning_b["status"] == ACTIVE
    assert warning_b["labels"]["model"] == warning_a["labels"]["model"] == MODEL
    assert find(alerts, version=VERSION_B, alertname=SLOW_BURN)["status"] == ACTIVE

    incidents = [a for a in alerts if "incident_id" in a["labels"]]
    assert {int(a["labels"]["incident_id"]) for a in incidents} == (
        opened[VERSION_A] | opened[VERSION_B])
    for alert in incidents:
        assert alert["annotations"]["runbook_url"].startswith("docs/runbooks/sequential-")
        assert alert["annotations"]["dashboard_url"] == "http://127.0.0.1:8501/alerts"
    # One notification group per incident; Prometheus' alerts group by name and version.
    grouped = [{k: v for k, v in group["labels"].items()} for group in groups]
    by_incident = [g["incident_id"] for g in grouped if "incident_id" in g]
    assert sorted(by_incident) == sorted(a["labels"]["incident_id"] for a in incidents)
    assert {(g["alertname"], g["model_version"]) for g in grouped
            if "incident_id" not in g} == {(SLOW_BURN, VERSION_A), (SLOW_BURN, VERSION_B)}


def test_equal_on_a_label_the_alerts_lack_inhibits_every_version(
        sqlite_runtime: Runtime, tmp_path: Path) -> None:
    """Why the label names must agree: inhibiting on ``version``, a label neither the
    incidents nor Prometheus' alerts carry, treats every version of the model as the same
    (the configs before they named ``model_version``)."""
    config = without_integrations(yaml.safe_load(SHIPPED_CONFIGS[1].read_text()))
    config["inhibit_rules"][0]["equal"] = ["model", "version"]
    with running_alertmanager(config, tmp_path) as url:
        open_incidents(sqlite_runtime, url)
        alerts = once(url, lambda alerts: len(alerts) == 3 and suppressed(alerts, 2))
    critical_a = find(alerts, version=VERSION_A, severity="critical")
    assert find(alerts, version=VERSION_B, cause=SUBGROUP)["status"]["inhibitedBy"] == [
        critical_a["fingerprint"]]
