"""Notifications to real servers on loopback: a JSON webhook receiver and an SMTP server.
A receiver that is down or failing is retried with backoff, every attempt is recorded, and
the alert is kept."""

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
    AlertMessage,
    alertmanager_payload,
    deliver_pending,
    email_message,
    resend_firing,
    webhook_payload,
)
from monitor.runtime import Runtime
from monitor.safe_output import html_safe_json
from monitor.store.db import session_scope
from monitor.store.models import Alert, Notification
from tests.alerting.support import add_version, http_receiver, result, smtp_server, store_run
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


def test_webhook_gets_firing_then_resolved(sqlite_runtime: Runtime) -> None:
    with http_receiver() as receiver:
        config = _config({"webhooks": [{"url": f"{receiver.url}/hook",
                                        "headers": {"X-Token": "abc"}}]})
        report = _fire(sqlite_runtime, config)
        assert report.delivery is not None and report.delivery.sent == 1
        (firing,) = receiver.wait_for(lambda r: len(r) == 1)
        assert firing.path == "/hook" and firing.headers["x-token"] == "abc"
        body = firing.body
        assert body["status"] == "firing" and body["version"] == "1"
        assert body["alert"]["labels"]["alertname"] == "sw-drift"
        assert body["alert"]["labels"]["feature"] == "software_version"
        assert body["alert"]["summary"] == "cxr-triage 1.4.0: new software version (p=1e-06)"
        assert body["alert"]["url"] == f"http://mon:8000/v1/alerts/{body['alert']['id']}"

        _fire(sqlite_runtime, config, day=11, p_value=0.5, now=NOW + timedelta(hours=1))
        requests = receiver.wait_for(lambda r: len(r) == 2)
        assert requests[1].body["status"] == "resolved"
        assert requests[1].body["alert"]["resolved_at"] is not None
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

    # not due yet: nothing is attempted
    early = deliver_pending(runtime, config=config, now=NOW + timedelta(seconds=30))
    assert early.sent == early.retrying == 0
    with http_receiver(port) as receiver:
        later = deliver_pending(runtime, config=config, now=NOW + timedelta(seconds=61))
        assert later.sent == 1
        (request,) = receiver.wait_for(lambda r: len(r) == 1)
        assert request.body["alert"]["id"] == alert.id
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
    assert mail["Subject"] == "[FIRING:warning] sw-drift cxr-triage 1.4.0"
    text = mail.get_body(("plain",)).get_content()
    assert "new software version" in text and "feature=software_version" in text
    page = mail.get_body(("html",)).get_content()
    assert "new software version" in page and "<td>software_version</td>" in page
    assert '<a href="http://mon:8000/v1/alerts/' in page
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
        assert sent["labels"]["alertname"] == "sw-drift"
        assert sent["labels"]["model_version"] == "1.4.0"
        assert sent["startsAt"] == NOW.isoformat().replace("+00:00", "Z")
        # firing: endsAt four re-send intervals ahead, so Alertmanager keeps it active
        assert sent["endsAt"] == (NOW + timedelta(minutes=20)).isoformat().replace("+00:00", "Z")
        assert sent["generatorURL"].startswith("http://mon:8000/v1/alerts/")

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


def test_resolved_alertmanager_payload_ends_at_resolution() -> None:
    resolved = datetime(2026, 11, 3, tzinfo=UTC)
    message = AlertMessage(alert_id=1, event="resolved", rule="r", model="m",
                           model_version="1", severity="critical", state="resolved",
                           labels={"alertname": "r"}, summary="s", started_at=NOW,
                           fired_at=NOW + timedelta(hours=1), resolved_at=resolved,
                           acknowledged_by="alice", url="http://x/v1/alerts/1",
                           runbook_url="docs/runbooks/r.md",
                           dashboard_url="http://127.0.0.1:8501/alerts")
    (body,) = alertmanager_payload(message, now=resolved + timedelta(hours=1),
                                   resend_interval_s=300)
    assert body["endsAt"] == "2026-11-03T00:00:00Z"
    assert body["startsAt"] == (NOW + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert body["annotations"]["acknowledged_by"] == "alice"


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
        # the silence is over and the alert still fires: the next check notifies again
        _fire(sqlite_runtime, config, day=11, now=NOW + timedelta(hours=2))
        (request,) = receiver.wait_for(lambda r: len(r) == 1)
    assert request.body["alert"]["id"] == alert_id
    assert [n.status for n in _notifications(sqlite_runtime)] == ["silenced", "sent"]


HOSTILE = "</script><script>window.__xss=1</script><img src=x onerror=alert(2)>\u202e"


def _hostile_message(url: str = "http://mon:8000/v1/alerts/7") -> AlertMessage:
    return AlertMessage(
        alert_id=7, event="firing", rule="subgroup-gap", model="cxr-triage",
        model_version="1.4.0", severity="warning", state="firing",
        labels={"alertname": "subgroup-gap", "feature": f"site={HOSTILE}"},
        summary=f"cxr-triage 1.4.0: subgroup gap site={HOSTILE}", started_at=NOW,
        fired_at=NOW, resolved_at=None, acknowledged_by=None, url=url,
        runbook_url="docs/runbooks/subgroup-gap.md", dashboard_url="http://127.0.0.1:8501/alerts")


def test_email_escapes_every_value_and_links_only_http() -> None:
    channel = EmailChannel.model_validate({"smtp_host": "127.0.0.1", "from": "m@example.org",
                                           "to": ["a@example.org"]})
    mail = email_message(_hostile_message(), channel)
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
                 alertmanager_payload(message, now=NOW, resend_interval_s=60)):
        encoded = html_safe_json(body)
        assert not set("<>&") & set(encoded)
        assert json.loads(encoded) == body  # the same data for a JSON parser
