"""The alert state machine, run on the results of each check.

Per rule observation (``monitor.alerting.rules``) and its stable key (rule, model, version,
detector and feature), one ``alert`` row:

* condition true: a new or resolved alert becomes ``pending`` (``consecutive`` = 1); each
  further window adds one; at the rule's ``for`` windows it becomes ``firing``
  (``firing_windows`` counts the windows seen while firing, which rollback policies read);
* condition false: ``pending`` or ``firing`` becomes ``resolved``;
* no evidence in a run (detector absent or insufficient data): no change;
* its rule removed from the config: ``resolved`` at the version's next check.

A window counts once: a run whose window ends no later than the last window counted for the
alert (a re-check of the same window, or an older one back-filled) changes nothing.
Acknowledging records who looked (cleared when the alert fires again after resolving);
silencing suppresses notifications until a time. Both are audited.

``process_check_run`` commits the alerts, their pending notifications and any rollback
recommendation in one transaction, and only then delivers notifications and deploy hooks
(``monitor.alerting.notify``), so a channel that is down never loses an alert.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor import registry
from monitor.alerting.config import AlertingConfig, load_config
from monitor.alerting.notify import (
    DeliveryReport,
    deliver_pending,
    queue_notifications,
    resend_firing,
)
from monitor.alerting.rules import Observation, observe_all
from monitor.errors import NotFoundError, ValidationError
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.models import Alert, Notification
from monitor.store.results import CheckRunInfo, get_check_run

log = logging.getLogger(__name__)

ALERT_STATES = ("pending", "firing", "resolved")


@dataclass(frozen=True)
class Transition:
    alert_id: int
    rule: str
    labels: dict[str, str]
    before: str | None  # None: a new alert
    after: str


@dataclass(frozen=True)
class EvaluationReport:
    check_run_id: int
    transitions: tuple[Transition, ...]
    firing: tuple[int, ...]  # ids of this run's alerts that are firing after it
    notifications_queued: int
    recommendations: tuple[registry.RecommendationInfo, ...]
    delivery: DeliveryReport | None = None


@dataclass(frozen=True)
class NotificationInfo:
    id: int
    channel: str
    target: str
    event: str
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None
    sent_at: datetime | None


@dataclass(frozen=True)
class AlertInfo:
    id: int
    key: str
    rule: str
    model: str
    model_version: str | None
    severity: str
    state: str
    labels: dict[str, Any]
    summary: str | None
    consecutive: int
    firing_windows: int
    started_at: datetime
    fired_at: datetime | None
    updated_at: datetime
    resolved_at: datetime | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    silenced_until: datetime | None
    last_check_run_id: int | None
    notifications: tuple[NotificationInfo, ...] = ()

    @classmethod
    def of(cls, row: Alert, notifications: tuple[NotificationInfo, ...] = ()) -> AlertInfo:
        return cls(row.id, row.key, row.rule, row.model, row.model_version, row.severity,
                   row.state, dict(row.labels or {}), row.summary, row.consecutive,
                   row.firing_windows, row.started_at, row.fired_at, row.updated_at,
                   row.resolved_at, row.acknowledged_by, row.acknowledged_at,
                   row.silenced_until, row.last_check_run_id, notifications)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _new_window(alert: Alert, run: CheckRunInfo) -> bool:
    return alert.last_window_end is None or run.window_end > alert.last_window_end


def _apply(session: Session, obs: Observation, run: CheckRunInfo, config: AlertingConfig,
           now: datetime) -> tuple[Alert | None, Transition | None, int]:
    """One observation's effect on its alert: (alert, transition or None, notifications)."""
    alert = session.scalar(select(Alert).where(Alert.key == obs.key))
    if alert is None and not obs.active:
        return None, None, 0
    if alert is not None and not _new_window(alert, run):
        return alert, None, 0
    before = None if alert is None else alert.state
    if alert is None:
        alert = Alert(key=obs.key, rule=obs.rule.name, model=run.model,
                      model_version=run.version, severity=obs.rule.severity, state="pending",
                      labels=obs.labels, summary=obs.summary, consecutive=0, firing_windows=0,
                      started_at=now, updated_at=now)
        session.add(alert)
    queued = 0
    if obs.active:
        if alert.state == "resolved":
            alert.state, alert.started_at, alert.fired_at, alert.resolved_at = (
                "pending", now, None, None)
            alert.consecutive, alert.firing_windows = 0, 0
            alert.acknowledged_by, alert.acknowledged_at = None, None
        alert.consecutive += 1
        if alert.state == "pending" and alert.consecutive >= obs.rule.for_windows:
            alert.state, alert.fired_at = "firing", now
        if alert.state == "firing":
            alert.firing_windows += 1
        alert.severity, alert.labels, alert.summary = obs.rule.severity, obs.labels, obs.summary
    elif alert.state in ("pending", "firing"):
        alert.state, alert.resolved_at = "resolved", now
        alert.consecutive, alert.firing_windows = 0, 0
    alert.last_check_run_id, alert.last_window_end, alert.updated_at = run.id, run.window_end, now
    session.flush()
    if alert.state == "firing":
        queued = queue_notifications(session, alert, event="firing", config=config, now=now)
    elif before == "firing" and alert.state == "resolved":
        queued = queue_notifications(session, alert, event="resolved", config=config, now=now)
    changed = before != alert.state
    transition = Transition(alert.id, alert.rule, dict(alert.labels or {}), before,
                            alert.state) if changed else None
    return alert, transition, queued


def _orphans(session: Session, run: CheckRunInfo, config: AlertingConfig) -> list[Alert]:
    """Open alerts of the run's version whose rule is gone from the config: they would
    otherwise stay open (and be re-sent to Alertmanager) for ever."""
    names = [rule.name for rule in config.rules]
    return list(session.scalars(select(Alert).where(
        Alert.model == run.model, Alert.model_version == run.version,
        Alert.state.in_(("pending", "firing")), Alert.rule.not_in(names))))


def evaluate_run(session: Session, run: CheckRunInfo, config: AlertingConfig, *,
                 now: datetime | None = None) -> EvaluationReport:
    """Apply every rule to one check run, queue notifications and apply the rollback
    policies of the run's model, all in the caller's transaction."""
    now = now or datetime.now(UTC)
    transitions, firing, queued = [], [], 0
    for obs in observe_all(config.rules, run):
        alert, transition, added = _apply(session, obs, run, config, now)
        queued += added
        if transition is not None:
            transitions.append(transition)
            log.info("alert %d %s %s: %s -> %s", transition.alert_id, obs.rule.name,
                     obs.labels.get("feature", ""), transition.before, transition.after)
        if alert is not None and alert.state == "firing":
            firing.append(alert.id)
    for alert in _orphans(session, run, config):
        before = alert.state
        alert.state, alert.resolved_at, alert.updated_at = "resolved", now, now
        alert.consecutive, alert.firing_windows = 0, 0
        session.flush()
        if before == "firing":
            queued += queue_notifications(session, alert, event="resolved", config=config,
                                          now=now)
        transitions.append(Transition(alert.id, alert.rule, dict(alert.labels or {}), before,
                                      "resolved"))
        log.info("alert %d %s resolved: its rule is no longer configured", alert.id, alert.rule)
    recommendations = registry.apply_rollback_policies(session, config, model=run.model,
                                                       now=now)
    return EvaluationReport(run.id, tuple(transitions), tuple(firing), queued,
                            tuple(recommendations))


def process_check_run(runtime: Runtime, check_run_id: int, *,
                      config: AlertingConfig | None = None, now: datetime | None = None,
                      deliver: bool = True) -> EvaluationReport:
    """Evaluate a stored check run and commit; then (``deliver``) send what is due."""
    config = config or load_config(runtime.settings)
    with session_scope(runtime.sessions) as session:
        run = get_check_run(session, check_run_id)
        report = evaluate_run(session, run, config, now=now)
    if not deliver:
        return report
    delivery = deliver_pending(runtime, config=config, now=now)
    registry.deliver_deploy_hooks(runtime, config=config, now=now)
    return EvaluationReport(report.check_run_id, report.transitions, report.firing,
                            report.notifications_queued, report.recommendations, delivery)


def _check_run_id(outcome: Any) -> int:
    if isinstance(outcome, int):
        return outcome
    for name in ("check_run_id", "run_id"):
        value = getattr(outcome, name, None)
        if isinstance(value, int):
            return value
    run = getattr(outcome, "run", None)
    if run is not None and isinstance(getattr(run, "id", None), int):
        return int(run.id)
    raise ValidationError(f"check outcome {type(outcome).__name__} names no check run id",
                          field="check_run_id")


def on_check_complete(runtime: Runtime, outcome: Any) -> EvaluationReport | None:
    """The hook ``monitor.checks`` calls after each check (``on_check_complete``). The check
    is already stored; an evaluation that fails is logged, not raised, so it cannot fail the
    check (``monitor alerts evaluate RUN_ID`` runs it again)."""
    try:
        return process_check_run(runtime, _check_run_id(outcome))
    except Exception:
        log.exception("alert evaluation of check run %s failed",
                      getattr(outcome, "check_run_id", outcome))
        return None


# --- reading and changing alerts -----------------------------------------------------------


def _notifications(session: Session, alert_id: int) -> tuple[NotificationInfo, ...]:
    rows = session.scalars(select(Notification).where(Notification.alert_id == alert_id)
                           .order_by(Notification.id))
    return tuple(NotificationInfo(r.id, r.channel, r.target, r.event, r.status, r.attempts,
                                  r.last_error, r.created_at, r.next_attempt_at, r.sent_at)
                 for r in rows)


def _alert(session: Session, alert_id: int) -> Alert:
    row = session.get(Alert, alert_id)
    if row is None:
        raise NotFoundError(f"alert id {alert_id} not found")
    return row


def get_alert(session: Session, alert_id: int) -> AlertInfo:
    """One alert with its notifications."""
    return AlertInfo.of(_alert(session, alert_id), _notifications(session, alert_id))


def list_alerts(session: Session, *, state: str | None = "active", model: str | None = None,
                version: str | None = None, severity: str | None = None, limit: int = 200
                ) -> list[AlertInfo]:
    """Alerts, most recently updated first. ``state``: pending, firing, resolved, ``active``
    (pending or firing) or None for all."""
    query = select(Alert).order_by(Alert.updated_at.desc(), Alert.id.desc()).limit(limit)
    if state == "active":
        query = query.where(Alert.state.in_(("pending", "firing")))
    elif state is not None:
        if state not in ALERT_STATES:
            raise ValidationError(f"state {state!r} is not one of active, "
                                  f"{', '.join(ALERT_STATES)}", field="state")
        query = query.where(Alert.state == state)
    if model is not None:
        query = query.where(Alert.model == model)
    if version is not None:
        query = query.where(Alert.model_version == version)
    if severity is not None:
        query = query.where(Alert.severity == severity)
    return [AlertInfo.of(row) for row in session.scalars(query)]


def acknowledge(session: Session, alert_id: int, *, actor: str, reason: str | None = None,
                now: datetime | None = None) -> AlertInfo:
    now = now or datetime.now(UTC)
    alert = _alert(session, alert_id)
    alert.acknowledged_by, alert.acknowledged_at, alert.updated_at = actor, now, now
    registry.record_audit(session, actor=actor, action="acknowledge_alert", model=alert.model,
                          model_version=alert.model_version, reason=reason, alert_id=alert.id,
                          now=now, details={"rule": alert.rule, "state": alert.state})
    return get_alert(session, alert_id)


def silence(session: Session, alert_id: int, *, actor: str, until: datetime,
            reason: str | None, now: datetime | None = None) -> AlertInfo:
    """No notification for the alert until ``until`` (a time in the past lifts a silence).
    Silencing needs a reason."""
    if reason is None or not reason.strip():
        raise ValidationError(f"reason is required to silence alert {alert_id} "
                              f"(got {reason!r})", field="reason")
    now = now or datetime.now(UTC)
    until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
    alert = _alert(session, alert_id)
    alert.silenced_until, alert.updated_at = until, now
    registry.record_audit(session, actor=actor, action="silence_alert", model=alert.model,
                          model_version=alert.model_version, reason=reason, alert_id=alert.id,
                          now=now, details={"rule": alert.rule, "until": until.isoformat()})
    return get_alert(session, alert_id)


# --- delivery loop -------------------------------------------------------------------------


@dataclass(frozen=True)
class TickReport:
    resent: int
    delivery: DeliveryReport
    hooks: registry.HookReport


def deliver_due(runtime: Runtime, *, config: AlertingConfig | None = None,
                now: datetime | None = None) -> TickReport:
    """One pass of the delivery loop: re-arm Alertmanager re-sends, send due notifications,
    call due deploy hooks."""
    config = config or load_config(runtime.settings)
    now = now or datetime.now(UTC)
    with session_scope(runtime.sessions) as session:
        resent = resend_firing(session, config, now=now)
    delivery = deliver_pending(runtime, config=config, now=now)
    hooks = registry.deliver_deploy_hooks(runtime, config=config, now=now)
    return TickReport(resent, delivery, hooks)


class DeliveryLoop:
    """``deliver_due`` every ``interval_s`` seconds in a daemon thread (``monitor serve``)."""

    def __init__(self, runtime: Runtime, *, interval_s: float = 30.0):
        self.runtime = runtime
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> DeliveryLoop:
        self._thread = threading.Thread(target=self._run, name="alert-delivery", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                deliver_due(self.runtime)
            except Exception:  # keep delivering after a bad pass (config typo, DB blip)
                log.exception("alert delivery pass failed")
