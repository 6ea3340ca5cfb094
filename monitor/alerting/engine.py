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

from sqlalchemy.orm import Session

from monitor import registry
from monitor.alerting import rollback
from monitor.alerting.config import AlertingConfig, load_config
from monitor.alerting.incidents import group_run
from monitor.alerting.notify import (
    DeliveryReport,
    deliver_pending,
    resend_firing,
)
from monitor.alerting.rules import Observation, observe_all
from monitor.errors import ValidationError
from monitor.runtime import Runtime
from monitor.store.alerts import (
    ALERT_STATES,
    AlertRecord,
    AlertWindow,
    acknowledge_alert,
    add_alert,
    alert_by_key,
    get_alert,
    list_alerts,
    open_alerts_of_removed_rules,
    record_alert_window,
    resolve_alert,
    silence_alert,
)
from monitor.store.audit import record_audit
from monitor.store.db import session_scope
from monitor.store.incidents import AlertInfo
from monitor.store.notifications import NotificationInfo
from monitor.store.results import CheckRunInfo, get_check_run

log = logging.getLogger(__name__)

# ALERT_STATES, AlertInfo, NotificationInfo, get_alert and list_alerts are the store's, kept
# here for their callers.
__all__ = ["ALERT_STATES", "AlertInfo", "EvaluationReport", "NotificationInfo", "Transition",
           "evaluate_run", "get_alert", "list_alerts", "process_check_run"]


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


def _new_window(alert: AlertRecord, run: CheckRunInfo) -> bool:
    return alert.last_window_end is None or run.window_end > alert.last_window_end


def _first_window(obs: Observation, now: datetime) -> AlertWindow:
    """A new alert, before its first window counts."""
    return AlertWindow(state="pending", severity=obs.rule.severity, labels=obs.labels,
                       summary=obs.summary, consecutive=0, firing_windows=0, started_at=now,
                       fired_at=None, resolved_at=None, acknowledged_by=None,
                       acknowledged_at=None, last_check_run_id=None, last_window_end=None,
                       updated_at=now)


def _active(window: AlertWindow, obs: Observation, now: datetime) -> AlertWindow:
    """The condition holds: a resolved alert starts again as pending; one more window
    counts; at the rule's ``for`` windows a pending alert fires."""
    if window.state == "resolved":
        window = replace(window, state="pending", started_at=now, fired_at=None,
                         resolved_at=None, consecutive=0, firing_windows=0,
                         acknowledged_by=None, acknowledged_at=None)
    window = replace(window, consecutive=window.consecutive + 1)
    if window.state == "pending" and window.consecutive >= obs.rule.for_windows:
        window = replace(window, state="firing", fired_at=now)
    if window.state == "firing":
        window = replace(window, firing_windows=window.firing_windows + 1)
    return replace(window, severity=obs.rule.severity, labels=obs.labels, summary=obs.summary)


def _next_window(window: AlertWindow, obs: Observation, run: CheckRunInfo, now: datetime
                 ) -> AlertWindow:
    """The alert after one more window of the run (the state machine above)."""
    if obs.active:
        window = _active(window, obs, now)
    elif window.state in ("pending", "firing"):
        window = replace(window, state="resolved", resolved_at=now, consecutive=0,
                         firing_windows=0)
    return replace(window, last_check_run_id=run.id, last_window_end=run.window_end,
                   updated_at=now)


def _apply(session: Session, obs: Observation, run: CheckRunInfo, now: datetime
           ) -> tuple[AlertRecord | None, Transition | None]:
    """One observation's effect on its alert: (alert, transition or None)."""
    alert = alert_by_key(session, obs.key)
    if alert is None and not obs.active:
        return None, None
    if alert is not None and not _new_window(alert, run):
        return alert, None
    before = None if alert is None else alert.state
    if alert is None:
        alert = add_alert(session, key=obs.key, rule=obs.rule.name, model=run.model,
                          model_version=run.version,
                          window=_next_window(_first_window(obs, now), obs, run, now))
    else:
        alert = record_alert_window(session, alert.id,
                                    _next_window(alert.window(), obs, run, now))
    changed = before != alert.state
    transition = Transition(alert.id, alert.rule, dict(alert.labels or {}), before,
                            alert.state) if changed else None
    return alert, transition


def _resolve_orphans(session: Session, run: CheckRunInfo, config: AlertingConfig,
                     now: datetime) -> list[Transition]:
    """Resolve the open alerts of the run's version whose rule is gone from the config: they
    would otherwise stay open (and be re-sent to Alertmanager) for ever."""
    transitions = []
    for alert in open_alerts_of_removed_rules(session, model=run.model, version=run.version,
                                              rules=[rule.name for rule in config.rules]):
        resolve_alert(session, alert.id, now=now)
        transitions.append(Transition(alert.id, alert.rule, dict(alert.labels or {}),
                                      alert.state, "resolved"))
        log.info("alert %d %s resolved: its rule is no longer configured", alert.id, alert.rule)
    return transitions


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
    transitions += _resolve_orphans(session, run, config, now)
    grouped = group_run(session, run, config, now=now)
    recommendations = rollback.apply_rollback_policies(session, config, model=run.model,
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
    rollback.deliver_deploy_hooks(runtime, config=config, now=now)
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
    """The hook the service passes to each check it runs (``run_check``'s ``hooks``). The check
    is already stored; an evaluation that fails is logged, not raised, so it cannot fail the
    check (``monitor alerts evaluate RUN_ID`` runs it again)."""
    try:
        return process_check_run(runtime, _check_run_id(outcome))
    except Exception:
        log.exception("alert evaluation of check run %s failed",
                      getattr(outcome, "check_run_id", outcome))
        return None


# --- reading and changing alerts -----------------------------------------------------------


def acknowledge(session: Session, alert_id: int, *, actor: str, reason: str | None = None,
                now: datetime | None = None) -> AlertInfo:
    now = now or datetime.now(UTC)
    alert = acknowledge_alert(session, alert_id, actor=actor, now=now)
    record_audit(session, actor=actor, action="acknowledge_alert", model=alert.model,
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
    alert = silence_alert(session, alert_id, until=until, now=now)
    record_audit(session, actor=actor, action="silence_alert", model=alert.model,
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
    hooks = rollback.deliver_deploy_hooks(runtime, config=config, now=now)
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
