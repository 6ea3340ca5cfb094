"""Notifications of incidents to real servers on loopback: a JSON webhook receiver and an
SMTP server. A receiver that is down or failing is retried with backoff, every attempt is
recorded, and the incident is kept."""

from __future__ import annotations

import email.policy
import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage

from sqlalchemy import select

from monitor.alerting import engine
from monitor.alerting.config import AlertingConfig, EmailChannel, parse_config
from monitor.alerting.notify import (
    IncidentMessage,
    alertmanager_payload,
    deliver_pending,
    email_message,
    resend_firing,
    webhook_payload,
)
from monitor.runtime import Runtime
from monitor.safe_output import html_safe_json
from monitor.store.db import session_scope
from monitor.store.models import Alert, Incident, Notification
from tests.alerting.support import (
    add_version,
    http_receiver,
    result,
    sequential,
    smtp_server,
    store_run,
)
from tests.servers import free_port

NOW = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
RULE = {"name": "sw-drift", "detector": "CategoricalDrift", "feature": "software_version",
        "condition": "p_value < 0.01", "severity": "warning",
        "summary": "{model} {model_version}: new software version (p={p_value})"}
RETRY = {"max_attempts": 3, "initial_backoff_s": 60, "max_backoff_s": 600, "timeout_s": 2}


def _config(notifications: dict) -> AlertingConfig:
    return parse_config({"rules": [RULE],
                         "notifications": {"retry": RETRY, "external_url": "http://mon:8000",
                                           **notifications}})


def _fire(runtime: Runtime, config: AlertingConfig, *, day: float = 10, p_value: float = 1e-6,
          now: datetime = NOW) -> engine.EvaluationReport:
    version = add_version(runtime, "1.4.0") if day == 10 else 1
    run = store_run(runtime, version, day=day,
                    results=[result("CategoricalDrift", "software_version", p_value=p_value)])
    return engine.process_check_run(runtime, run, config=config, now=now)


def _notifications(runtime: Runtime) -> list[Notification]:
    with session_scope(runtime.sessions) as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def _incident_id(runtime: Runtime) -> int:
    with session_scope(runtime.sessions) as session:
        return int(session.scalars(select(Incident.id)).one())


def test_webhook_gets_firing_then_resolved(sqlite_runtime: Runtime) -> None:
    with http_receiver() as receiver:
        config = _config({"webhooks": [{"url": f"{receiver.url}/hook",
                                        "headers": {"X-Token": "abc"}}]})
        report = _fire(sqlite_runtime, config)
        assert report.delivery is not None and report.delivery.sent == 1
        (firing,) = receiver.wait_for(lambda r: len(r) == 1)
        incident_id = _incident_id(sqlite_runtime)
        assert firing.path == "/hook" and firing.headers["x-token"] == "abc"
        body = firing.body
        assert body["status"] == "firing" and body["version"] == "2"
        assert body["incident_id"] == body["incident"]["id"] == incident_id
        incident = body["incident"]
        assert incident["labels"] == {
            "alertname": "MonitorIncident", "model": "cxr-triage", "model_version": "1.4.0",
            "severity": "warning", "cause": "version=1.4.0", "incident_id": str(incident_id)}
        assert incident["cause"] == {"field": "version", "value": "1.4.0",
                                     "label": "version 1.4.0"}
        assert incident["summary"].startswith("version 1.4.0 since 2026-10-11: "
                                              "software_version CategoricalDrift p<1e-4")
        (finding,) = incident["findings"]
        assert (finding["rule"], finding["stream"]) == ("sw-drift",
                                                        "CategoricalDrift/software_version")
        assert incident["url"] == f"http://mon:8000/v1/incidents/{incident_id}"
        assert incident["runbook_url"] == "docs/runbooks/sw-drift.md"

        # resolved after two windows without an open finding, not after one
        for day in (11, 12):
            _fire(sqlite_runtime, config, day=day, p_value=0.5,
                  now=NOW + timedelta(hours=day))
        requests = receiver.wait_for(lambda r: len(r) == 2)
        assert requests[1].body["status"] == "resolved"
        assert requests[1].body["incident"]["resolved_at"] is not None
        assert requests[1].body["incident"]["resolved_reason"] == "cause gone"
    assert [(n.event, n.status, n.attempts) for n in _notifications(sqlite_runtime)] == [
        ("firing", "sent", 1), ("resolved", "sent", 1)]


def test_a_receiver_that_is_down_is_retried_and_the_alert_is_kept(runtime: Runtime) -> None:
    port = free_port()  # nothing listens here yet
    config = _config({"webhooks": [{"url": f"http://127.0.0.1:{port}/hook"}]})
    report = _fire(runtime, config)
    assert report.delivery is not None and report.delivery.retrying == 1
    (row,) = _notifications(runtime)
    assert (row.status, row.attempts) == ("pending", 1)
    assert "ConnectError" in (row.last_error or "")
    assert row.next_attempt_at == NOW + timedelta(seconds=60)  # first backoff
    with session_scope(runtime.sessions) as session:
        alert = session.scalars(select(Alert)).one()
        assert alert.state == "firing"  # committed before any send
        incident = session.scalars(select(Incident)).one()

    # not due yet: nothing is attempted
    early = deliver_pending(runtime, config=config, now=NOW + timedelta(seconds=30))
    assert early.sent == early.retrying == 0
    with http_receiver(port) as receiver:
        later = deliver_pending(runtime, config=config, now=NOW + timedelta(seconds=61))
        assert later.sent == 1
        (request,) = receiver.wait_for(lambda r: len(r) == 1)
        assert request.body["incident_id"] == incident.id
    (row,) = _notifications(runtime)
    assert (row.status, row.attempts, row.sent_at) == ("sent", 2, NOW + timedelta(seconds=61))
    assert "ConnectError" in (row.last_error or "")  # the failure stays on record
    # delivered once: a further pass sends nothing
    assert deliver_pending(runtime, config=config, now=NOW + timedelta(days=1)).sent == 0


def test_errors_back_off_then_fail_after_max_attempts(sqlite_runtime: Runtime) -> None:
    with http_receiver() as receiver:
        receiver.fail_next, receiver.fail_status = 10, 503
        config = _config({"webhooks": [{"url": receiver.url}]})
        _fire(sqlite_runtime, config)
        (row,) = _notifications(sqlite_runtime)
        assert "503" in (row.last_error or "") and row.attempts == 1
        second = deliver_pending(sqlite_runtime, config=config, now=NOW + timedelta(seconds=60))
        assert second.retrying == 1
        (row,) = _notifications(sqlite_runtime)
        # backoff doubles: 60 s after the first failure, 120 s after the second
        assert row.next_attempt_at == NOW + timedelta(seconds=60 + 120)
        third = deliver_pending(sqlite_runtime, config=config, now=NOW + timedelta(seconds=180))
        assert third.failed == 1
        assert receiver.requests == []
    (row,) = _notifications(sqlite_runtime)
    assert (row.status, row.attempts, row.next_attempt_at) == ("failed", 3, None)
    with session_scope(sqlite_runtime.sessions) as session:
        assert session.scalars(select(Alert.state)).one() == "firing"


def test_email_reaches_a_real_smtp_server(sqlite_runtime: Runtime) -> None:
    with smtp_server() as mailbox:
        config = _config({"email": [{"smtp_host": "127.0.0.1", "smtp_port": mailbox.port,
                                     "from": "monitor@example.org",
                                     "to": ["oncall@example.org", "lead@example.org"]}]})
        report = _fire(sqlite_runtime, config)
        assert report.delivery is not None and report.delivery.sent == 1
        (envelope,) = mailbox.wait_for(1)
    assert envelope.mail_from == "monitor@example.org"
    assert sorted(envelope.rcpt_tos) == ["lead@example.org", "oncall@example.org"]
    mail = message_from_bytes(envelope.content, policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    incident_id = _incident_id(sqlite_runtime)
    assert mail["Subject"] == (f"[FIRING:warning] incident {incident_id} cxr-triage 1.4.0: "
                               "version 1.4.0")
    text = mail.get_body(("plain",)).get_content()
    assert "version 1.4.0 since 2026-10-11" in text and f"incident: {incident_id}" in text
    assert "sw-drift | CategoricalDrift/software_version" in text
    assert f"incident_id={incident_id}" in text
    page = mail.get_body(("html",)).get_content()
    assert "<td>version 1.4.0</td>" in page and "<h4>findings</h4>" in page
    assert f'<a href="http://mon:8000/v1/incidents/{incident_id}"' in page
    (row,) = _notifications(sqlite_runtime)
    assert (row.channel, row.target, row.status) == (
        "email", "mailto:oncall@example.org,lead@example.org", "sent")


def test_severity_filters_channels(sqlite_runtime: Runtime) -> None:
    config = _config({"webhooks": [{"url": "http://127.0.0.1:9/a", "min_severity": "critical"},
                                   {"url": "http://127.0.0.1:9/b", "min_severity": "info"}]})
    _fire(sqlite_runtime, config)  # a warning
    assert [n.target for n in _notifications(sqlite_runtime)] == ["http://127.0.0.1:9/b"]


def test_alertmanager_payload_and_periodic_resend(sqlite_runtime: Runtime) -> None:
    with http_receiver() as fake_alertmanager:
        config = _config({"alertmanager": [{"url": fake_alertmanager.url}],
                          "resend_interval": "5m"})
        _fire(sqlite_runtime, config)
        (first,) = fake_alertmanager.wait_for(lambda r: len(r) == 1)
        assert first.path == "/api/v2/alerts"
        (sent,) = first.body
        incident_id = _incident_id(sqlite_runtime)
        assert sent["labels"]["alertname"] == "MonitorIncident"
        assert sent["labels"]["model_version"] == "1.4.0"
        assert sent["labels"]["incident_id"] == str(incident_id)
        assert sent["annotations"]["incident_id"] == str(incident_id)
        assert sent["annotations"]["since"] == "2026-10-11"
        assert sent["startsAt"] == NOW.isoformat().replace("+00:00", "Z")
        # firing: endsAt four re-send intervals ahead, so Alertmanager keeps it active
        assert sent["endsAt"] == (NOW + timedelta(minutes=20)).isoformat().replace("+00:00", "Z")
        assert sent["generatorURL"] == f"http://mon:8000/v1/incidents/{incident_id}"

        with session_scope(sqlite_runtime.sessions) as session:
            assert resend_firing(session, config, now=NOW + timedelta(minutes=4)) == 0
        with session_scope(sqlite_runtime.sessions) as session:
            assert resend_firing(session, config, now=NOW + timedelta(minutes=5)) == 1
        later = NOW + timedelta(minutes=5)
        assert deliver_pending(sqlite_runtime, config=config, now=later).sent == 1
        second = fake_alertmanager.wait_for(lambda r: len(r) == 2)[1].body[0]
        assert second["endsAt"] == (later + timedelta(minutes=20)).isoformat().replace(
            "+00:00", "Z")
        tick = engine.deliver_due(sqlite_runtime, config=config, now=later + timedelta(minutes=1))
        assert tick.resent == 0 and tick.delivery.sent == 0
    (row,) = _notifications(sqlite_runtime)  # the re-send re-arms the same row
    assert (row.status, row.attempts) == ("sent", 1)


def _message(event: str, **fields: object) -> IncidentMessage:
    values: dict = dict(
        incident_id=1, event=event, rule="sequential-page", model="m", model_version="1",
        severity="critical", state="open", cause_field="station", cause_value="XR-SOUTH-1",
        cause_label="XR-SOUTH-1", summary="s", opened_at=NOW,
        paged_at=NOW + timedelta(hours=1), resolved_at=None, resolved_reason=None,
        first_evidence_day=None, findings=(), url="http://x/v1/incidents/1",
        runbook_url="docs/runbooks/sequential-page.md",
        dashboard_url="http://127.0.0.1:8501/alerts",
        labels={"alertname": "MonitorIncident", "model": "m", "model_version": "1",
                "severity": "critical", "cause": "station=XR-SOUTH-1", "incident_id": "1"})
    values.update(fields)
    return IncidentMessage(**values)


def test_resolved_alertmanager_payload_ends_at_resolution() -> None:
    resolved = datetime(2026, 11, 3, tzinfo=UTC)
    message = _message("resolved", state="resolved", resolved_at=resolved,
                       resolved_reason="rolled back")
    (body,) = alertmanager_payload(message, now=resolved + timedelta(hours=1),
                                   resend_interval_s=300)
    assert body["endsAt"] == "2026-11-03T00:00:00Z"
    assert body["startsAt"] == (NOW + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert body["annotations"]["resolved_reason"] == "rolled back"


def test_an_escalation_ends_the_warning_alert_in_alertmanager() -> None:
    critical, warning = alertmanager_payload(_message("escalated"), now=NOW,
                                             resend_interval_s=300)
    assert critical["labels"]["severity"] == "critical"
    assert critical["endsAt"] == (NOW + timedelta(minutes=20)).isoformat().replace("+00:00", "Z")
    assert warning["labels"] == {**critical["labels"], "severity": "warning"}
    assert warning["endsAt"] == NOW.isoformat().replace("+00:00", "Z")


def test_a_channel_for_critical_hears_of_a_warning_incident_at_its_escalation(
        sqlite_runtime: Runtime) -> None:
    config = parse_config({"notifications": {"webhooks": [
        {"url": "http://127.0.0.1:9/pager", "min_severity": "critical"},
        {"url": "http://127.0.0.1:9/team", "min_severity": "warning"}]}})
    version = add_version(sqlite_runtime, "1.4.0")
    for day, level in ((10, "warning"), (11, "page"), (12, "page"), (13, "page")):
        run = store_run(sqlite_runtime, version, day=day,
                        results=[sequential("MMDDrift/embedding", "embedding", level)])
        engine.process_check_run(sqlite_runtime, run, config=config, deliver=False,
                                 now=NOW + timedelta(days=day))
    assert [(n.target.rsplit("/", 1)[1], n.event) for n in _notifications(sqlite_runtime)] == [
        ("team", "firing"), ("pager", "escalated"), ("team", "escalated")]


def test_a_channel_removed_from_the_config_is_recorded(sqlite_runtime: Runtime) -> None:
    config = _config({"webhooks": [{"url": "http://127.0.0.1:9/gone"}]})
    _fire(sqlite_runtime, config)
    without = _config({})
    deliver_pending(sqlite_runtime, config=without, now=NOW + timedelta(hours=1))
    (row,) = _notifications(sqlite_runtime)
    assert row.last_error == "channel no longer configured" and row.attempts == 2


def test_a_notification_dropped_by_a_silence_is_sent_once_the_silence_ends(
        sqlite_runtime: Runtime) -> None:
    port = free_port()
    config = _config({"webhooks": [{"url": f"http://127.0.0.1:{port}/hook"}]})
    (alert_id,) = _fire(sqlite_runtime, config).firing  # the receiver is down: retrying
    with session_scope(sqlite_runtime.sessions) as session:
        engine.silence(session, alert_id, actor="alice", reason="vendor on site",
                       until=NOW + timedelta(hours=1), now=NOW)
    skipped = deliver_pending(sqlite_runtime, config=config, now=NOW + timedelta(minutes=5))
    assert skipped.skipped == 1
    assert [n.status for n in _notifications(sqlite_runtime)] == ["silenced"]
    with http_receiver(port) as receiver:
        # the silence is over and the incident is still open: the next check notifies again
        _fire(sqlite_runtime, config, day=11, now=NOW + timedelta(hours=2))
        (request,) = receiver.wait_for(lambda r: len(r) == 1)
    assert request.body["incident_id"] == _incident_id(sqlite_runtime)
    assert [n.status for n in _notifications(sqlite_runtime)] == ["silenced", "sent"]


def test_a_notification_queued_for_an_alert_before_incidents_is_still_sent(
        sqlite_runtime: Runtime) -> None:
    """A row written per alert (before revision 0004) is delivered as that alert."""
    version = add_version(sqlite_runtime, "1.4.0")
    run = store_run(sqlite_runtime, version, day=10, results=[])
    with session_scope(sqlite_runtime.sessions) as session:
        alert = Alert(key="k", rule="performance-drop", model="cxr-triage",
                      model_version="1.4.0", severity="critical", state="firing",
                      labels={"alertname": "performance-drop", "feature": "sensitivity"},
                      summary="sensitivity worse", consecutive=2, firing_windows=1,
                      started_at=NOW, fired_at=NOW, updated_at=NOW, last_check_run_id=run)
        session.add(alert)
        session.flush()
        session.add(Notification(alert_id=alert.id, channel="webhook", target="legacy",
                                 event="firing", status="pending", attempts=0,
                                 created_at=NOW, next_attempt_at=NOW))
    with http_receiver() as receiver:
        config = _config({"webhooks": [{"url": receiver.url, "name": "legacy"}]})
        assert deliver_pending(sqlite_runtime, config=config, now=NOW).sent == 1
        (request,) = receiver.wait_for(lambda r: len(r) == 1)
    assert request.body["incident_id"] is None
    assert request.body["incident"]["alert_id"] == alert.id
    assert request.body["incident"]["summary"] == "sensitivity worse"
    assert request.body["incident"]["url"].endswith(f"/v1/alerts/{alert.id}")


HOSTILE = "</script><script>window.__xss=1</script><img src=x onerror=alert(2)>\u202e"


def _hostile_message(url: str = "http://mon:8000/v1/incidents/7") -> IncidentMessage:
    return _message(
        "firing", incident_id=7, rule="subgroup-gap", severity="warning",
        cause_field="site", cause_value=HOSTILE, cause_label=f"site {HOSTILE}",
        labels={"alertname": "MonitorIncident", "cause": f"site={HOSTILE}"},
        summary=f"site {HOSTILE} since 2026-10-11: subgroup gap", url=url,
        findings=({"rule": "subgroup-gap", "stream": f"SubgroupBias/site={HOSTILE}:ppv",
                   "effect": f"site={HOSTILE} ppv 40% vs 60% for the rest"},),
        runbook_url="docs/runbooks/subgroup-gap.md")


def test_email_escapes_every_value_and_links_only_http() -> None:
    channel = EmailChannel.model_validate({"smtp_host": "127.0.0.1", "from": "m@example.org",
                                           "to": ["a@example.org"]})
    mail = email_message(_hostile_message(), channel)
    assert "\u202e" not in mail["Subject"] and "<script>" in mail["Subject"]  # plain text
    page = mail.get_body(("html",)).get_content()
    assert "<script>" not in page and "<img" not in page and "\u202e" not in page
    assert "&lt;/script&gt;&lt;script&gt;window.__xss=1&lt;/script&gt;" in page
    assert page.count("<a ") == 1
    text = mail.get_body(("plain",)).get_content()
    assert "\u202e" not in text and "site=</script>" in text  # plain text stays as typed
    hostile_url = email_message(_hostile_message("javascript:alert(1)//"), channel)
    page = hostile_url.get_body(("html",)).get_content()
    assert "<a " not in page and "javascript:alert(1)//" in page


def test_json_bodies_carry_no_markup() -> None:
    message = _hostile_message()
    for body in (webhook_payload(message, now=NOW),
                 alertmanager_payload(message, now=NOW, resend_interval_s=60),
                 alertmanager_payload(_hostile_message().__class__(
                     **{**vars(message), "event": "escalated"}), now=NOW,
                     resend_interval_s=60)):
        encoded = html_safe_json(body)
        assert not set("<>&") & set(encoded)
        assert json.loads(encoded) == body  # the same data for a JSON parser
