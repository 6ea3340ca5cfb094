"""The alert state machine, run on the results of each check, and the incidents it feeds.

Per rule observation (``monitor.alerting.rules``) and its stable key (rule, model, version,
detector and feature), one ``alert`` row, a *finding*:

* condition true: a new or resolved alert becomes ``pending`` (``consecutive`` = 1); each
  further window adds one; at the rule's ``for`` windows it becomes ``firing``
  (``firing_windows`` counts the windows seen while firing, which rollback policies read);
* condition false: ``pending`` or ``firing`` becomes ``resolved``;
* no evidence in a run (detector absent or insufficient data): no change;
* its rule removed from the config: ``resolved`` at the version's next check.

A window counts once: a run whose window ends no later than the last window counted for the
alert (a re-check of the same window, or an older one back-filled) changes nothing.
Acknowledging records who looked (cleared when the alert fires again after resolving);
silencing suppresses its incident's notifications until a time (an incident is silenced
while all of its open findings are). Both are audited.

Findings do not notify on their own: after the rules, ``monitor.alerting.incidents`` files
the version's open findings under incidents by cause, and an incident notifies when it
opens, escalates and resolves.

``process_check_run`` commits the alerts, the incidents, their pending notifications and any
rollback recommendation in one transaction, and only then delivers notifications and deploy
hooks (``monitor.alerting.notify``), so a channel that is down never loses a page.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor import registry
from monitor.alerting.config import AlertingConfig, load_config
from monitor.alerting.incidents import group_run
from monitor.alerting.notify import (
    DeliveryReport,
    deliver_pending,
    resend_firing,
)
from monitor.alerting.rules import Observation, observe_all
from monitor.errors import NotFoundError, ValidationError
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.incidents import AlertInfo, NotificationInfo
from monitor.store.models import Alert, Notification
from monitor.store.results import CheckRunInfo, get_check_run

log = logging.getLogger(__name__)

ALERT_STATES = ("pending", "firing", "resolved")
__all__ = ["AlertInfo", "EvaluationReport", "NotificationInfo", "Transition",
           "evaluate_run", "process_check_run"]


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
    incidents_opened: tuple[int, ...] = ()
    incidents_escalated: tuple[int, ...] = ()
    incidents_resolved: tuple[int, ...] = ()


def _new_window(alert: Alert, run: CheckRunInfo) -> bool:
    return alert.last_window_end is None or run.window_end > alert.last_window_end


def _apply(session: Session, obs: Observation, run: CheckRunInfo, now: datetime
           ) -> tuple[Alert | None, Transition | None]:
    """One observation's effect on its alert: (alert, transition or None)."""
    alert = session.scalar(select(Alert).where(Alert.key == obs.key))
    if alert is None and not obs.active:
        return None, None
    if alert is not None and not _new_window(alert, run):
        return alert, None
    before = None if alert is None else alert.state
    if alert is None:
        alert = Alert(key=obs.key, rule=obs.rule.name, model=run.model,
                      model_version=run.version, severity=obs.rule.severity, state="pending",
                      labels=obs.labels, summary=obs.summary, consecutive=0, firing_windows=0,
                      started_at=now, updated_at=now)
        session.add(alert)
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
    changed = before != alert.state
    transition = Transition(alert.id, alert.rule, dict(alert.labels or {}), before,
                            alert.state) if changed else None
    return alert, transition


def _orphans(session: Session, run: CheckRunInfo, config: AlertingConfig) -> list[Alert]:
    """Open alerts of the run's version whose rule is gone from the config: they would
    otherwise stay open (and be re-sent to Alertmanager) for ever."""
    names = [rule.name for rule in config.rules]
    return list(session.scalars(select(Alert).where(
        Alert.model == run.model, Alert.model_version == run.version,
        Alert.state.in_(("pending", "firing")), Alert.rule.not_in(names))))


def evaluate_run(session: Session, run: CheckRunInfo, config: AlertingConfig, *,
                 now: datetime | None = None) -> EvaluationReport:
    """Apply every rule to one check run, group the version's findings into incidents (and
    queue their notifications) and apply the rollback policies of the run's model, all in
    the caller's transaction."""
    now = now or datetime.now(UTC)
    transitions, firing = [], []
    for obs in observe_all(config.rules, run):
        alert, transition = _apply(session, obs, run, now)
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
        transitions.append(Transition(alert.id, alert.rule, dict(alert.labels or {}), before,
                                      "resolved"))
        log.info("alert %d %s resolved: its rule is no longer configured", alert.id, alert.rule)
    grouped = group_run(session, run, config, now=now)
    recommendations = registry.apply_rollback_policies(session, config, model=run.model,
                                                       now=now)
    return EvaluationReport(run.id, tuple(transitions), tuple(firing),
                            grouped.notifications_queued, tuple(recommendations),
                            incidents_opened=tuple(grouped.opened),
                            incidents_escalated=tuple(grouped.escalated),
                            incidents_resolved=tuple(grouped.resolved))


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
    return replace(report, delivery=delivery)


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


def _notifications(session: Session, alert: Alert) -> tuple[NotificationInfo, ...]:
    """What was sent about an alert: its incident's notifications (and its own, from before
    incidents)."""
    about = Notification.alert_id == alert.id
    if alert.incident_id is not None:
        about = about | (Notification.incident_id == alert.incident_id)
    rows = session.scalars(select(Notification).where(about).order_by(Notification.id))
    return tuple(NotificationInfo.of(r) for r in rows)


def _alert(session: Session, alert_id: int) -> Alert:
    row = session.get(Alert, alert_id)
    if row is None:
        raise NotFoundError(f"alert id {alert_id} not found")
    return row


def get_alert(session: Session, alert_id: int) -> AlertInfo:
    """One alert with its (incident's) notifications."""
    row = _alert(session, alert_id)
    return AlertInfo.of(row, _notifications(session, row))


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
