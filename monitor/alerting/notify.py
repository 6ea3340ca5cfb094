"""Notifications: Alertmanager (v2 API), generic JSON webhooks and email (SMTP), with retry.

Delivery is an outbox. The engine commits the alert and one ``notification`` row per channel
(status ``pending``) in the same transaction as the alert's state change; only then does
``deliver_pending`` send what is due, each send outside any transaction, and record the
outcome: ``sent``, or a failure with ``attempts``, ``last_error`` and ``next_attempt_at``
(exponential backoff, ``RetryPolicy``) until ``max_attempts`` marks it ``failed``. A channel
that is down therefore never loses an alert: the alert row is already committed, and the
notification waits for the next ``deliver_pending`` (run after every check and by the
delivery loop of ``monitor serve`` / ``monitor alerts deliver``).

Alertmanager expects re-sends: it treats an alert as resolved once its ``endsAt`` passes.
While an alert fires we send ``endsAt`` = now + 4 x ``resend_interval`` and
``resend_firing`` re-arms the Alertmanager notification every ``resend_interval``, so the
alert stays active there for as long as it fires here and resolves there on its own (after
at most four intervals) if this service stops.

Safe output. Labels and summaries carry event-derived values (a site, a software version),
so every channel treats them as untrusted text: JSON bodies (webhook, Alertmanager) are sent
with ``< > &`` as ``\\u`` escapes, the same data for a JSON parser but no markup for a
receiver that pastes them into a page; email has a plain-text part and an HTML part in
which every value is escaped and only http(s) URLs become links; subjects and text lose
control and bidirectional characters.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from monitor.alerting.config import (
    AlertingConfig,
    AlertmanagerChannel,
    Channel,
    EmailChannel,
    NotificationSettings,
    WebhookChannel,
    load_config,
)
from monitor.runtime import Runtime
from monitor.safe_output import html_safe_json, html_text, safe_link, visible
from monitor.store.db import session_scope
from monitor.store.models import Alert, Notification

log = logging.getLogger(__name__)

# Alertmanager keeps a firing alert active until endsAt; we re-send well before that.
ENDS_AT_INTERVALS = 4
# Each rule's runbook: docs/runbooks/<rule>.md in this repository (a site's own rules add
# theirs there). Relative, like the Prometheus rules' runbook_url.
RUNBOOKS_PATH = "docs/runbooks"
# The dashboard page that lists the service's alerts (dashboards/app.py, url_path "alerts").
DASHBOARD_ALERTS_PAGE = "alerts"
_SEND_ERRORS = (httpx.HTTPError, OSError, smtplib.SMTPException, ValueError)


@dataclass(frozen=True)
class AlertMessage:
    """What a channel sends about one alert transition."""

    alert_id: int
    event: str  # firing | resolved
    rule: str
    model: str
    model_version: str | None
    severity: str
    state: str
    labels: Mapping[str, str]
    summary: str
    started_at: datetime
    fired_at: datetime | None
    resolved_at: datetime | None
    acknowledged_by: str | None
    url: str
    runbook_url: str
    dashboard_url: str

    @classmethod
    def of(cls, alert: Alert, *, event: str, external_url: str,
           dashboard_url: str) -> AlertMessage:
        """``dashboard_url`` is the dashboard's base address (MONITOR_DASHBOARD_URL)."""
        return cls(
            alert_id=alert.id, event=event, rule=alert.rule, model=alert.model,
            model_version=alert.model_version, severity=alert.severity, state=alert.state,
            labels={str(k): str(v) for k, v in (alert.labels or {}).items()},
            summary=alert.summary or alert.rule, started_at=alert.started_at,
            fired_at=alert.fired_at, resolved_at=alert.resolved_at,
            acknowledged_by=alert.acknowledged_by,
            url=f"{external_url.rstrip('/')}/v1/alerts/{alert.id}",
            runbook_url=runbook_url(alert.rule),
            dashboard_url=f"{dashboard_url.rstrip('/')}/{DASHBOARD_ALERTS_PAGE}",
        )


def runbook_url(rule: str) -> str:
    """The runbook of a rule, by its name (rule names hold only letters, digits and _.:-)."""
    return f"{RUNBOOKS_PATH}/{rule}.md"


@dataclass(frozen=True)
class DeliveryReport:
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    skipped: int = 0


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def alertmanager_payload(message: AlertMessage, *, now: datetime,
                         resend_interval_s: float) -> list[dict[str, Any]]:
    """The body of ``POST /api/v2/alerts``: a list with this one alert."""
    if message.event == "resolved":
        ends_at = message.resolved_at or now
    else:
        ends_at = now + timedelta(seconds=ENDS_AT_INTERVALS * resend_interval_s)
    return [{
        "labels": dict(message.labels),
        "annotations": {"summary": message.summary, "alert_id": str(message.alert_id),
                        "runbook_url": message.runbook_url,
                        "dashboard_url": message.dashboard_url,
                        **({"acknowledged_by": message.acknowledged_by}
                           if message.acknowledged_by else {})},
        "startsAt": _iso(message.fired_at or message.started_at),
        "endsAt": _iso(ends_at),
        "generatorURL": message.url,
    }]


def webhook_payload(message: AlertMessage, *, now: datetime) -> dict[str, Any]:
    return {
        "version": "1",
        "status": message.event,
        "alert": {
            "id": message.alert_id,
            "rule": message.rule,
            "model": message.model,
            "model_version": message.model_version,
            "severity": message.severity,
            "state": message.state,
            "labels": dict(message.labels),
            "summary": message.summary,
            "started_at": _iso(message.started_at),
            "fired_at": _iso(message.fired_at) if message.fired_at else None,
            "resolved_at": _iso(message.resolved_at) if message.resolved_at else None,
            "acknowledged_by": message.acknowledged_by,
            "url": message.url,
            "runbook_url": message.runbook_url,
            "dashboard_url": message.dashboard_url,
        },
        "sent_at": _iso(now),
    }


def _email_lines(message: AlertMessage) -> list[tuple[str, str]]:
    """(name, value) rows of an alert email, values as the alert holds them."""
    rows = [("state", message.event), ("severity", message.severity),
            ("model", f"{message.model} {message.model_version or ''}".strip()),
            ("started", _iso(message.started_at))]
    if message.resolved_at:
        rows.append(("resolved", _iso(message.resolved_at)))
    rows += [("runbook", message.runbook_url), ("dashboard", message.dashboard_url)]
    return rows


def email_text(message: AlertMessage) -> str:
    """The plain-text part: values without control or bidirectional characters."""
    lines = [visible(message.summary), ""]
    lines += [f"{name}: {visible(value)}" for name, value in _email_lines(message)]
    lines += ["", "labels:",
              *(f"  {visible(k)}={visible(v)}" for k, v in sorted(message.labels.items())),
              "", visible(message.url)]
    return "\n".join(lines) + "\n"


def email_html(message: AlertMessage) -> str:
    """The HTML part: every value escaped; the alert's URL a link only when it is http(s)."""
    rows = "".join(f"<tr><th>{html_text(name)}</th><td>{html_text(value)}</td></tr>"
                   for name, value in _email_lines(message))
    labels = "".join(f"<tr><th>{html_text(k)}</th><td>{html_text(v)}</td></tr>"
                     for k, v in sorted(message.labels.items()))
    link = safe_link(message.url)
    footer = (f'<p><a href="{html_text(link)}">{html_text(link)}</a></p>' if link
              else f"<p>{html_text(message.url)}</p>")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>"
            f"<p>{html_text(message.summary)}</p><table>{rows}</table>"
            f"<h4>labels</h4><table>{labels}</table>{footer}</body></html>")


def email_message(message: AlertMessage, channel: EmailChannel) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = visible(f"[{message.event.upper()}:{message.severity}] {message.rule} "
                              f"{message.model} {message.model_version or ''}").strip()
    mail["From"] = channel.sender
    mail["To"] = ", ".join(channel.to)
    mail.set_content(email_text(message))
    mail.add_alternative(email_html(message), subtype="html")
    return mail


def _post_json(url: str, body: Any, *, headers: Mapping[str, str], timeout_s: float) -> None:
    response = httpx.post(url, content=html_safe_json(body).encode("utf-8"),
                          headers={**dict(headers), "Content-Type": "application/json"},
                          timeout=timeout_s)
    if response.status_code >= 300:
        raise httpx.HTTPStatusError(
            f"{url} answered {response.status_code}: {response.text[:200]}",
            request=response.request, response=response,
        )


def _send_email(mail: EmailMessage, channel: EmailChannel, *, timeout_s: float) -> None:
    smtp_class = smtplib.SMTP_SSL if channel.ssl else smtplib.SMTP
    with smtp_class(channel.smtp_host, channel.smtp_port, timeout=timeout_s) as smtp:
        if channel.starttls:
            smtp.starttls()
        if channel.username:
            password = (channel.password_file.read_text(encoding="utf-8").strip()
                        if channel.password_file else "")
            smtp.login(channel.username, password)
        smtp.send_message(mail)


def send(channel: Channel, message: AlertMessage, *, settings: NotificationSettings,
         now: datetime) -> None:
    """One delivery attempt; raises on any failure (refused, timeout, non-2xx, SMTP error)."""
    timeout_s = settings.retry.timeout_s
    if isinstance(channel, AlertmanagerChannel):
        body = alertmanager_payload(message, now=now,
                                    resend_interval_s=settings.resend_interval_s)
        _post_json(f"{channel.url.rstrip('/')}/api/v2/alerts", body, headers={},
                   timeout_s=timeout_s)
    elif isinstance(channel, WebhookChannel):
        _post_json(channel.url, webhook_payload(message, now=now), headers=channel.headers,
                   timeout_s=timeout_s)
    else:
        _send_email(email_message(message, channel), channel, timeout_s=timeout_s)


def is_silenced(alert: Alert, now: datetime) -> bool:
    return alert.silenced_until is not None and alert.silenced_until > now


def queue_notifications(session: Session, alert: Alert, *, event: str,
                        config: AlertingConfig, now: datetime) -> int:
    """Add a pending notification per channel that takes the alert's severity, in the
    caller's transaction. A firing alert is notified once per episode (since ``started_at``)
    per channel; a silenced alert is not notified. Returns how many were added."""
    if is_silenced(alert, now):
        return 0
    added = 0
    for channel in config.notifications.channels:
        if not channel.accepts(alert.severity):
            continue
        already = session.scalar(select(Notification.id).where(
            Notification.alert_id == alert.id, Notification.channel == channel.kind,
            Notification.target == channel.target, Notification.event == event,
            Notification.status != "silenced",  # dropped while silenced: notify again
            Notification.created_at >= (alert.resolved_at if event == "resolved"
                                        else alert.started_at),
        ).limit(1))
        if already is not None:
            continue
        session.add(Notification(
            alert_id=alert.id, channel=channel.kind, target=channel.target, event=event,
            status="pending", attempts=0, created_at=now, next_attempt_at=now,
        ))
        added += 1
    return added


def resend_firing(session: Session, config: AlertingConfig, *, now: datetime) -> int:
    """Re-arm the Alertmanager notification of every firing, unsilenced alert whose last
    send is ``resend_interval`` old (Alertmanager expects re-sends). Returns how many."""
    channels = config.notifications.alertmanager
    if not channels:
        return 0
    due = now - timedelta(seconds=config.notifications.resend_interval_s)
    rearmed = 0
    for alert in session.scalars(select(Alert).where(Alert.state == "firing")):
        if is_silenced(alert, now):
            continue
        for channel in channels:
            if not channel.accepts(alert.severity):
                continue
            row = session.scalar(select(Notification).where(
                Notification.alert_id == alert.id, Notification.channel == channel.kind,
                Notification.target == channel.target, Notification.event == "firing",
                Notification.created_at >= alert.started_at,
            ).order_by(Notification.id.desc()).limit(1))
            if row is None:
                rearmed += queue_notifications(session, alert, event="firing", config=config,
                                               now=now)
            elif (row.status in ("sent", "failed", "silenced")
                  and (row.sent_at or row.created_at) <= due):
                row.status, row.attempts, row.next_attempt_at = "pending", 0, now
                rearmed += 1
    return rearmed


@dataclass(frozen=True)
class _Claimed:
    notification_id: int
    channel: Channel | None
    message: AlertMessage
    silenced: bool


def _claim(runtime: Runtime, config: AlertingConfig, now: datetime, limit: int
           ) -> list[_Claimed]:
    """Take the due notifications: each is leased by moving its next_attempt_at forward only
    if nobody else moved it first, so two delivery loops never send the same row at once."""
    lease = now + timedelta(seconds=3 * config.notifications.retry.timeout_s + 30)
    claimed = []
    with session_scope(runtime.sessions) as session:
        due = session.execute(
            select(Notification.id, Notification.next_attempt_at)
            .where(Notification.status == "pending", Notification.next_attempt_at <= now)
            .order_by(Notification.id).limit(limit)
        ).all()
        for notification_id, seen in due:
            taken = session.execute(
                update(Notification)
                .where(Notification.id == notification_id, Notification.status == "pending",
                       Notification.next_attempt_at == seen)
                .values(next_attempt_at=lease)
            ).rowcount
            if not taken:
                continue
            row = session.get(Notification, notification_id)
            assert row is not None
            alert = session.get(Alert, row.alert_id)
            assert alert is not None
            claimed.append(_Claimed(
                notification_id=notification_id,
                channel=config.notifications.channel(row.channel, row.target),
                message=AlertMessage.of(alert, event=row.event,
                                        external_url=config.notifications.external_url,
                                        dashboard_url=runtime.settings.dashboard_url),
                silenced=is_silenced(alert, now),
            ))
    return claimed


def _record(runtime: Runtime, notification_id: int, *, error: str | None,
            config: AlertingConfig, now: datetime, skipped: bool = False) -> str:
    retry = config.notifications.retry
    with session_scope(runtime.sessions) as session:
        row = session.get(Notification, notification_id)
        assert row is not None
        if skipped:
            row.status, row.next_attempt_at, row.last_error = "silenced", None, error
            return "skipped"
        row.attempts += 1
        if error is None:
            row.status, row.sent_at, row.next_attempt_at = "sent", now, None
            return "sent"
        row.last_error = error[:2000]
        if row.attempts >= retry.max_attempts:
            row.status, row.next_attempt_at = "failed", None
            return "failed"
        row.next_attempt_at = now + timedelta(seconds=retry.backoff_s(row.attempts))
        return "retrying"


def deliver_pending(runtime: Runtime, *, config: AlertingConfig | None = None,
                    now: datetime | None = None, limit: int = 500) -> DeliveryReport:
    """Send every notification that is due, one attempt each, and record the outcome."""
    config = config or load_config(runtime.settings)
    now = now or datetime.now(UTC)
    counts = {"sent": 0, "retrying": 0, "failed": 0, "skipped": 0}
    for item in _claim(runtime, config, now, limit):
        if item.silenced:
            outcome = _record(runtime, item.notification_id, error="silenced", config=config,
                              now=now, skipped=True)
        elif item.channel is None:
            outcome = _record(runtime, item.notification_id, config=config, now=now,
                              error="channel no longer configured")
        else:
            error = None
            try:
                send(item.channel, item.message, settings=config.notifications, now=now)
            except _SEND_ERRORS as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.warning("notification %d to %s %s failed: %s", item.notification_id,
                            item.channel.kind, item.channel.target, error)
            outcome = _record(runtime, item.notification_id, error=error, config=config,
                              now=now)
        counts[outcome] += 1
    return DeliveryReport(**counts)
