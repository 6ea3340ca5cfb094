"""Every alert links a runbook and the dashboard: the service's incidents (the runbook of
their leading finding's rule, built-in or example, on every channel) and the Prometheus
rules'. Each runbook exists and says what the alert means, what to check, who to call and
how to silence or accept it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from monitor.alerting.config import EmailChannel
from monitor.alerting.notify import (
    IncidentMessage,
    alertmanager_payload,
    email_message,
    runbook_url,
    webhook_payload,
)
from monitor.alerting.rules import DEFAULT_RULES
from monitor.config import ConfigError, load_settings
from monitor.store.alerts import AlertRecord
from monitor.store.incidents import IncidentRecord

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks"
PROMETHEUS_RULES = ROOT / "alerts" / "prometheus" / "monitor-rules.yml"
SERVICE_RULE_FILES = (ROOT / "alerts" / "monitor-rules.example.yml",
                      ROOT / "monitor" / "simulate" / "demo-alert-rules.yml")
SECTIONS = ("## What it means", "## First checks", "## Who to call", "## Silence or accept")
NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def service_rule_names() -> set[str]:
    names = {rule.name for rule in DEFAULT_RULES}
    for path in SERVICE_RULE_FILES:
        names |= {rule["name"] for rule in yaml.safe_load(path.read_text()).get("rules") or []}
    return names


def prometheus_alert_names() -> set[str]:
    document = yaml.safe_load(PROMETHEUS_RULES.read_text())
    return {rule["alert"] for group in document["groups"] for rule in group["rules"]}


def alert(rule: str, severity: str = "critical") -> AlertRecord:
    return AlertRecord(
        id=5, key="k", rule=rule, model="cxr-triage", model_version="1.4.0",
        severity=severity, state="firing", summary="s", consecutive=1, firing_windows=1,
        last_window_end=NOW, started_at=NOW, fired_at=NOW, updated_at=NOW, resolved_at=None,
        acknowledged_by=None, acknowledged_at=None, silenced_until=None,
        last_check_run_id=None, incident_id=3,
        labels={"alertname": rule, "model": "cxr-triage", "model_version": "1.4.0",
                "severity": severity})


def incident(severity: str = "critical") -> IncidentRecord:
    return IncidentRecord(
        id=3, model="cxr-triage", model_version="1.4.0", cause_field="station",
        cause_value="XR-SOUTH-1", cause_label="XR-SOUTH-1", state="open", severity=severity,
        opened_at=NOW, first_evidence_day=None, paged_at=NOW, escalated_at=None,
        resolved_at=None, resolved_reason=None, summary="s", evidence=(), quiet_windows=0,
        last_check_run_id=None, last_window_end=None, accepted_by=None, accepted_at=None,
        accept_reason=None, accepted_since=None, updated_at=NOW)


def message(rule: str, dashboard_url: str) -> IncidentMessage:
    return IncidentMessage.of(incident(), event="firing", lead=alert(rule),
                              external_url="http://mon:8000", dashboard_url=dashboard_url)


@pytest.mark.parametrize("rule", sorted(service_rule_names()))
def test_every_service_rule_has_a_runbook(rule: str) -> None:
    page = ROOT / runbook_url(rule)
    assert page.parent == RUNBOOKS and page.is_file(), page


@pytest.mark.parametrize("rule", sorted(rule.name for rule in DEFAULT_RULES))
def test_every_incident_the_service_sends_links_runbook_and_dashboard(rule: str) -> None:
    """An incident links the runbook of its leading finding's rule, on every channel."""
    sent_message = message(rule, load_settings().dashboard_url)
    expected = {"runbook_url": f"docs/runbooks/{rule}.md",
                "dashboard_url": "http://127.0.0.1:8501/alerts"}
    (sent,) = alertmanager_payload(sent_message, now=NOW, resend_interval_s=300)
    assert {k: sent["annotations"][k] for k in expected} == expected
    assert sent["labels"]["incident_id"] == sent["annotations"]["incident_id"] == "3"
    hooked = webhook_payload(sent_message, now=NOW)["incident"]
    assert {k: hooked[k] for k in expected} == expected
    channel = EmailChannel.model_validate({"smtp_host": "127.0.0.1", "from": "m@example.org",
                                           "to": ["a@example.org"]})
    text = email_message(sent_message, channel).get_body(("plain",)).get_content()
    assert f"runbook: docs/runbooks/{rule}.md" in text
    assert "dashboard: http://127.0.0.1:8501/alerts" in text


def test_the_dashboard_link_follows_monitor_dashboard_url(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_DASHBOARD_URL", "https://dash.example.org/monitor/")
    settings = load_settings()
    sent = message("sequential-page", settings.dashboard_url)
    assert sent.dashboard_url == "https://dash.example.org/monitor/alerts"


def test_a_dashboard_url_that_is_not_http_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="MONITOR_DASHBOARD_URL"):
        load_settings(dashboard_url="javascript:alert(1)")


def test_every_runbook_belongs_to_an_alert_and_has_its_sections() -> None:
    pages = {page.stem: page for page in RUNBOOKS.glob("*.md") if page.name != "README.md"}
    assert set(pages) == service_rule_names() | prometheus_alert_names()  # none stale
    index = (RUNBOOKS / "README.md").read_text()
    for name, page in pages.items():
        text = page.read_text()
        assert text.startswith(f"# {name}\n"), name
        positions = [text.find(section) for section in SECTIONS]
        assert -1 not in positions and positions == sorted(positions), name
        assert f"]({name}.md)" in index, name
        # every relative link points at a file that exists
        for target in re.findall(r"\]\(([^)#:]+)\)", text):
            assert (page.parent / target).exists(), (name, target)
