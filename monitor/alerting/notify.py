"""Notifications: Alertmanager (v2 API), generic JSON webhooks and email (SMTP), with retry.

What notifies is an *incident* (``monitor.alerting.incidents``): the findings of one model
version that share a cause. An incident is notified when it opens (event ``firing``), when it
escalates from warning to critical (``escalated``, once) and when it resolves or is accepted
(``resolved``); its findings (alerts) never notify on their own.

Delivery is an outbox. The engine commits the incident and one ``notification`` row per
channel (status ``pending``) in the same transaction as the incident's change; only then does
``deliver_pending`` send what is due, each send outside any transaction, and record the
outcome: ``sent``, or a failure with ``attempts``, ``last_error`` and ``next_attempt_at``
(exponential backoff, ``RetryPolicy``) until ``max_attempts`` marks it ``failed``. A channel
that is down therefore never loses a page: the incident is already committed, and the
notification waits for the next ``deliver_pending`` (run after every check and by the
delivery loop of ``monitor serve`` / ``monitor alerts deliver``).

Alertmanager expects re-sends: it treats an alert as resolved once its ``endsAt`` passes.
While an incident is open we send ``endsAt`` = now + 4 x ``resend_interval`` and
``resend_firing`` re-arms its Alertmanager notification every ``resend_interval``, so it
stays active there for as long as it is open here and resolves there on its own (after at
most four intervals) if this service stops. Its Alertmanager identity is its labels:
``alertname`` ``MonitorIncident``, ``model``, ``model_version``, ``severity``, ``cause`` and
``incident_id`` (plus the extra ``labels`` of its leading finding's rule), so an escalation is
sent as the critical alert together with the end of the warning one.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
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
from monitor.store.alerts import OPEN_ALERT_STATES, AlertRecord, alert_record, alerts_of_incident
from monitor.store.db import session_scope
from monitor.store.incidents import IncidentRecord, incident_record, open_paged_incidents
from monitor.store.notifications import (
    PAGE_EVENTS,
    NotificationInfo,
    claim_due_notifications,
    count_failed_attempt,
    incident_notified,
    latest_page,
    mark_notification_failed,
    mark_notification_sent,
    mark_notification_silenced,
    queue_notification,
    rearm_notification,
    schedule_retry,
)

log = logging.getLogger(__name__)

# Alertmanager keeps a firing alert active until endsAt; we re-send well before that.
ENDS_AT_INTERVALS = 4
# Each rule's runbook: docs/runbooks/<rule>.md in this repository (a site's own rules add
# theirs there). Relative, like the Prometheus rules' runbook_url. An incident links the
# runbook of its leading finding's rule.
RUNBOOKS_PATH = "docs/runbooks"
# The dashboard page that lists the incidents and their findings (dashboards/app.py,
# url_path "alerts").
DASHBOARD_ALERTS_PAGE = "alerts"
INCIDENT_ALERTNAME = "MonitorIncident"
EVENTS = ("firing", "escalated", "resolved")
# Labels every finding carries that say where it came from, not how to route it: an
# incident's labels take only the other (the rule's own ``labels:``) from its leading finding.
FINDING_LABELS = frozenset({"alertname", "model", "model_version", "severity", "category",
                            "detector", "feature"})
_SEND_ERRORS = (httpx.HTTPError, OSError, smtplib.SMTPException, ValueError)


@dataclass(frozen=True)
class IncidentMessage:
    """What a channel sends about one incident event. ``findings``: the incident's evidence
    rows (rule, detector, feature, family, level, statistic, since, effect, ...).

    A notification written before incidents (revision 0004) belongs to an alert: its message
    has no ``incident_id`` and describes that alert (``of_alert``)."""

    incident_id: int | None
    event: str  # firing | escalated | resolved
    rule: str  # the leading finding's rule: the runbook
    model: str
    model_version: str | None
    severity: str
    state: str
    cause_field: str | None
    cause_value: str | None
    cause_label: str | None
    labels: Mapping[str, str]
    summary: str
    opened_at: datetime
    paged_at: datetime | None
    resolved_at: datetime | None
    resolved_reason: str | None
    first_evidence_day: date | None
    findings: tuple[Mapping[str, Any], ...]
    url: str
    runbook_url: str
    dashboard_url: str
    alert_id: int | None = None

    @classmethod
    def of(cls, incident: IncidentRecord, *, event: str, lead: AlertRecord | None,
           external_url: str, dashboard_url: str) -> IncidentMessage:
        """``lead``: the incident's leading finding (its rule names the runbook and lends
        its own labels); ``dashboard_url`` is the dashboard's base (MONITOR_DASHBOARD_URL)."""
        rule = lead.rule if lead is not None else INCIDENT_ALERTNAME
        extra = {} if lead is None else {
            str(k): str(v) for k, v in (lead.labels or {}).items() if k not in FINDING_LABELS}
        return cls(
            incident_id=incident.id, event=event, rule=rule, model=incident.model,
            model_version=incident.model_version, severity=incident.severity,
            state=incident.state, cause_field=incident.cause_field,
            cause_value=incident.cause_value, cause_label=incident.cause_label,
            labels=incident_labels(incident, extra),
            summary=incident.summary or incident.cause_label, opened_at=incident.opened_at,
            paged_at=incident.paged_at, resolved_at=incident.resolved_at,
            resolved_reason=incident.resolved_reason,
            first_evidence_day=incident.first_evidence_day,
            findings=tuple(dict(row) for row in incident.evidence),
            url=f"{external_url.rstrip('/')}/v1/incidents/{incident.id}",
            runbook_url=runbook_url(rule),
            dashboard_url=f"{dashboard_url.rstrip('/')}/{DASHBOARD_ALERTS_PAGE}",
        )

    @classmethod
    def of_alert(cls, alert: AlertRecord, *, event: str, external_url: str,
                 dashboard_url: str) -> IncidentMessage:
        """A notification queued for one alert before incidents existed."""
        return cls(
            incident_id=None, event=event, rule=alert.rule, model=alert.model,
            model_version=alert.model_version, severity=alert.severity, state=alert.state,
            cause_field=None, cause_value=None, cause_label=None,
            labels={str(k): str(v) for k, v in (alert.labels or {}).items()},
            summary=alert.summary or alert.rule, opened_at=alert.started_at,
            paged_at=alert.fired_at, resolved_at=alert.resolved_at, resolved_reason=None,
            first_evidence_day=None, findings=(),
            url=f"{external_url.rstrip('/')}/v1/alerts/{alert.id}",
            runbook_url=runbook_url(alert.rule),
            dashboard_url=f"{dashboard_url.rstrip('/')}/{DASHBOARD_ALERTS_PAGE}",
            alert_id=alert.id,
        )


def incident_labels(incident: IncidentRecord, extra: Mapping[str, str] | None = None
                    ) -> dict[str, str]:
    """An incident's labels: its identity in Alertmanager (the fixed ones win over
    ``extra``, a rule's own routing labels)."""
    return {
        **(extra or {}),
        "alertname": INCIDENT_ALERTNAME,
        "model": incident.model,
        "model_version": incident.model_version,
        "severity": incident.severity,
        "cause": f"{incident.cause_field}={incident.cause_value}",
        "incident_id": str(incident.id),
    }


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


def _day(day: date | None) -> str | None:
    return None if day is None else day.isoformat()


def _annotations(message: IncidentMessage) -> dict[str, str]:
    notes = {"summary": message.summary, "runbook_url": message.runbook_url,
             "dashboard_url": message.dashboard_url}
    if message.incident_id is not None:
        notes["incident_id"] = str(message.incident_id)
    if message.alert_id is not None:
        notes["alert_id"] = str(message.alert_id)
    if message.cause_label:
        notes["cause"] = message.cause_label
    if message.first_evidence_day is not None:
        notes["since"] = message.first_evidence_day.isoformat()
    if message.resolved_reason:
        notes["resolved_reason"] = message.resolved_reason
    return notes


def alertmanager_payload(message: IncidentMessage, *, now: datetime,
                         resend_interval_s: float) -> list[dict[str, Any]]:
    """The body of ``POST /api/v2/alerts``: the incident's alert; for an escalation, also
    the end of its warning alert (another identity, since ``severity`` is a label)."""
    if message.event == "resolved":
        ends_at = message.resolved_at or now
    else:
        ends_at = now + timedelta(seconds=ENDS_AT_INTERVALS * resend_interval_s)
    starts_at = _iso(message.paged_at or message.opened_at)
    alerts = [{
        "labels": dict(message.labels),
        "annotations": _annotations(message),
        "startsAt": starts_at,
        "endsAt": _iso(ends_at),
        "generatorURL": message.url,
    }]
    if message.event == "escalated":
        alerts.append({
            "labels": {**message.labels, "severity": "warning"},
            "annotations": {**_annotations(message), "escalated_to": message.severity},
            "startsAt": starts_at,
            "endsAt": _iso(now),
            "generatorURL": message.url,
        })
    return alerts


def webhook_payload(message: IncidentMessage, *, now: datetime) -> dict[str, Any]:
    return {
        "version": "2",
        "status": message.event,
        "incident_id": message.incident_id,
        "incident": {
            "id": message.incident_id,
            "alert_id": message.alert_id,
            "model": message.model,
            "model_version": message.model_version,
            "severity": message.severity,
            "state": message.state,
            "cause": {"field": message.cause_field, "value": message.cause_value,
                      "label": message.cause_label},
            "rule": message.rule,
            "labels": dict(message.labels),
            "summary": message.summary,
            "opened_at": _iso(message.opened_at),
            "paged_at": _iso(message.paged_at) if message.paged_at else None,
            "resolved_at": _iso(message.resolved_at) if message.resolved_at else None,
            "resolved_reason": message.resolved_reason,
            "first_evidence_day": _day(message.first_evidence_day),
            "findings": [dict(row) for row in message.findings],
            "url": message.url,
            "runbook_url": message.runbook_url,
            "dashboard_url": message.dashboard_url,
        },
        "sent_at": _iso(now),
    }


def _email_lines(message: IncidentMessage) -> list[tuple[str, str]]:
    """(name, value) rows of an incident email, values as the incident holds them."""
    rows = [("state", message.event), ("severity", message.severity),
            ("model", f"{message.model} {message.model_version or ''}".strip())]
    if message.incident_id is not None:
        rows.append(("incident", str(message.incident_id)))
    if message.cause_label:
        rows.append(("cause", message.cause_label))
    if message.first_evidence_day is not None:
        rows.append(("since", message.first_evidence_day.isoformat()))
    rows.append(("opened", _iso(message.opened_at)))
    if message.resolved_at:
        rows.append(("resolved", _iso(message.resolved_at)))
    if message.resolved_reason:
        rows.append(("reason", message.resolved_reason))
    rows += [("runbook", message.runbook_url), ("dashboard", message.dashboard_url)]
    return rows


def _finding_line(row: Mapping[str, Any]) -> str:
    parts = [str(row.get("rule", "")), str(row.get("stream") or row.get("feature") or "")]
    if row.get("level"):
        parts.append(str(row["level"]))
    if row.get("effect"):
        parts.append(str(row["effect"]))
    return " | ".join(part for part in parts if part)


def email_text(message: IncidentMessage) -> str:
    """The plain-text part: values without control or bidirectional characters."""
    lines = [visible(message.summary), ""]
    lines += [f"{name}: {visible(value)}" for name, value in _email_lines(message)]
    if message.findings:
        lines += ["", "findings:", *(f"  {visible(_finding_line(row))}"
                                     for row in message.findings)]
    lines += ["", "labels:",
              *(f"  {visible(k)}={visible(v)}" for k, v in sorted(message.labels.items())),
              "", visible(message.url)]
    return "\n".join(lines) + "\n"


def email_html(message: IncidentMessage) -> str:
    """The HTML part: every value escaped; the incident's URL a link only when it is
    http(s)."""
    rows = "".join(f"<tr><th>{html_text(name)}</th><td>{html_text(value)}</td></tr>"
                   for name, value in _email_lines(message))
    findings = "".join(f"<li>{html_text(_finding_line(row))}</li>" for row in message.findings)
    labels = "".join(f"<tr><th>{html_text(k)}</th><td>{html_text(v)}</td></tr>"
                     for k, v in sorted(message.labels.items()))
    link = safe_link(message.url)
    footer = (f'<p><a href="{html_text(link)}">{html_text(link)}</a></p>' if link
              else f"<p>{html_text(message.url)}</p>")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>"
            f"<p>{html_text(message.summary)}</p><table>{rows}</table>"
            + (f"<h4>findings</h4><ul>{findings}</ul>" if findings else "")
            + f"<h4>labels</h4><table>{labels}</table>{footer}</body></html>")


def email_message(message: IncidentMessage, channel: EmailChannel) -> EmailMessage:
    mail = EmailMessage()
    what = (f"incident {message.incident_id} {message.model} {message.model_version or ''}: "
            f"{message.cause_label}" if message.incident_id is not None
            else f"{message.rule} {message.model} {message.model_version or ''}")
    mail["Subject"] = visible(f"[{message.event.upper()}:{message.severity}] {what}").strip()
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


def send(channel: Channel, message: IncidentMessage, *, settings: NotificationSettings,
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


def is_silenced(alert: AlertRecord, now: datetime) -> bool:
    return alert.silenced_until is not None and alert.silenced_until > now


def lead_finding(findings: Sequence[AlertRecord], severity: str) -> AlertRecord | None:
    """The finding an incident's runbook and routing labels come from: the oldest open one
    at the incident's severity, else the oldest open one, else the oldest."""
    open_ = [a for a in findings if a.state in OPEN_ALERT_STATES]
    at_severity = [a for a in open_ if a.severity == severity]
    for group in (at_severity, open_, list(findings)):
        if group:
            return min(group, key=lambda a: a.id)
    return None


def incident_silenced(session: Session, incident: IncidentRecord, now: datetime) -> bool:
    """An incident is silenced while every one of its open findings is (every finding, once
    none is open); one without findings is not."""
    findings = alerts_of_incident(session, incident.id)
    open_ = [a for a in findings if a.state in OPEN_ALERT_STATES] or findings
    return bool(open_) and all(is_silenced(a, now) for a in open_)


def queue_incident_notifications(session: Session, incident: IncidentRecord, *, event: str,
                                 config: AlertingConfig, now: datetime) -> int:
    """Add a pending notification of ``event`` per channel that takes the incident's
    severity, in the caller's transaction; each event at most once per incident and channel
    (one dropped while silenced is queued again). A silenced incident is not notified.
    Returns how many were added."""
    if event not in EVENTS:
        raise ValueError(f"event {event!r} is not one of {', '.join(EVENTS)}")
    if incident_silenced(session, incident, now):
        return 0
    # a channel that first heard of the incident at its escalation has had its page
    same = PAGE_EVENTS if event == "firing" else (event,)
    added = 0
    for channel in config.notifications.channels:
        if not channel.accepts(incident.severity):
            continue
        if incident_notified(session, incident.id, channel=channel.kind, target=channel.target,
                             events=same):
            continue
        queue_notification(session, incident_id=incident.id, channel=channel.kind,
                           target=channel.target, event=event, now=now)
        added += 1
    return added


def _rearm(session: Session, incident: IncidentRecord, channel: Channel, *,
           config: AlertingConfig, due: datetime, now: datetime) -> int:
    """Re-arm one channel's page of an incident if its last send is as old as ``due``; queue
    it if the channel never had one. Returns how many notifications that made pending."""
    page = latest_page(session, incident.id, channel=channel.kind, target=channel.target)
    if page is None:
        return queue_incident_notifications(session, incident, event="firing", config=config,
                                            now=now)
    if page.status in ("sent", "failed", "silenced") and (page.sent_at or page.created_at) <= due:
        rearm_notification(session, page.id, now=now)
        return 1
    return 0


def resend_firing(session: Session, config: AlertingConfig, *, now: datetime) -> int:
    """Re-arm the Alertmanager notification of every open, paged, unsilenced incident whose
    last send is ``resend_interval`` old (Alertmanager expects re-sends). Returns how many."""
    channels = config.notifications.alertmanager
    if not channels:
        return 0
    due = now - timedelta(seconds=config.notifications.resend_interval_s)
    rearmed = 0
    for incident in open_paged_incidents(session):
        if incident_silenced(session, incident, now):
            continue
        for channel in channels:
            if channel.accepts(incident.severity):
                rearmed += _rearm(session, incident, channel, config=config, due=due, now=now)
    return rearmed


@dataclass(frozen=True)
class _Claimed:
    notification_id: int
    channel: Channel | None
    message: IncidentMessage
    silenced: bool


def _message(session: Session, row: NotificationInfo, *, config: AlertingConfig,
             dashboard_url: str, now: datetime) -> tuple[IncidentMessage, bool]:
    """The message of a notification and whether it is silenced now."""
    external = config.notifications.external_url
    if row.incident_id is not None:
        incident = incident_record(session, row.incident_id)
        lead = lead_finding(alerts_of_incident(session, incident.id), incident.severity)
        return (IncidentMessage.of(incident, event=row.event, lead=lead, external_url=external,
                                   dashboard_url=dashboard_url),
                incident_silenced(session, incident, now))
    assert row.alert_id is not None
    alert = alert_record(session, row.alert_id)
    return (IncidentMessage.of_alert(alert, event=row.event, external_url=external,
                                     dashboard_url=dashboard_url),
            is_silenced(alert, now))


def _claim(runtime: Runtime, config: AlertingConfig, now: datetime, limit: int
           ) -> list[_Claimed]:
    """Take the due notifications (leased, so two delivery loops never send the same row at
    once) and build their messages."""
    lease = now + timedelta(seconds=3 * config.notifications.retry.timeout_s + 30)
    claimed = []
    with session_scope(runtime.sessions) as session:
        for row in claim_due_notifications(session, now=now, lease_until=lease, limit=limit):
            message, silenced = _message(session, row, config=config,
                                         dashboard_url=runtime.settings.dashboard_url, now=now)
            claimed.append(_Claimed(
                notification_id=row.id,
                channel=config.notifications.channel(row.channel, row.target),
                message=message, silenced=silenced,
            ))
    return claimed


def _record(runtime: Runtime, notification_id: int, *, error: str | None,
            config: AlertingConfig, now: datetime, skipped: bool = False) -> str:
    retry = config.notifications.retry
    with session_scope(runtime.sessions) as session:
        if skipped:
            mark_notification_silenced(session, notification_id, reason=error)
            return "skipped"
        if error is None:
            mark_notification_sent(session, notification_id, now=now)
            return "sent"
        attempts = count_failed_attempt(session, notification_id, error=error)
        if attempts >= retry.max_attempts:
            mark_notification_failed(session, notification_id)
            return "failed"
        schedule_retry(session, notification_id,
                       at=now + timedelta(seconds=retry.backoff_s(attempts)))
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
