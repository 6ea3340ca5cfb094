"""What a person can change from the dashboard, each through the same functions as the API and
the CLI (``monitor.alerting.engine``, ``monitor.alerting.incidents``, ``monitor.registry``),
so every action is audited.

Who acts. Each action asks for an operator token (the ``operator`` or ``admin`` role),
checked against the token store as the API checks a bearer token, and the token's name is
what the audit log records. While the store holds no token (the open demo set-up, where the
API itself accepts anyone and the dashboard listens on loopback only), the dashboard accepts
any non-empty name typed into the token field as the operator and records that name.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo

from dashboards.guard import is_open, principal_for
from monitor.alerting import engine, incidents
from monitor.alerting.config import AlertingConfig
from monitor.alerting.rollback import registry_for
from monitor.api.errors import Forbidden, Unauthorized
from monitor.errors import ValidationError
from monitor.registry import RecommendationInfo
from monitor.runtime import Runtime
from monitor.safe_output import visible
from monitor.store.db import session_scope
from monitor.store.incidents import IncidentInfo

MAX_SILENCE_HOURS = 24 * 30


def authenticate_operator(runtime: Runtime, credential: str | None) -> str:
    """The operator's name for a token (or, in open mode, the name typed). Raises
    ``Unauthorized`` for an empty, unknown or revoked token, ``Forbidden`` for a token
    without the operator role."""
    credential = (credential or "").strip()
    if not credential:
        raise Unauthorized("an operator token is required")
    if is_open(runtime):
        return visible(credential)[:128]
    principal = principal_for(runtime, credential)
    if principal is None:
        raise Unauthorized("a valid operator token is required (unknown or revoked token)")
    if not principal.may("operator"):
        raise Forbidden(f"token {principal.name!r} is not an operator token: it needs the "
                        "operator role")
    return principal.name


def _reason(reason: str | None, what: str) -> str:
    if reason is None or not reason.strip():
        raise ValidationError(f"a reason is required to {what}", field="reason")
    return reason.strip()


def acknowledge_alert(runtime: Runtime, alert_id: int, *, credential: str,
                      reason: str | None) -> str:
    """Acknowledge an alert; returns the operator's name."""
    actor = authenticate_operator(runtime, credential)
    with session_scope(runtime.sessions) as session:
        engine.acknowledge(session, alert_id, actor=actor,
                           reason=(reason or "").strip() or None)
    return actor


def silence_alert(runtime: Runtime, alert_id: int, *, credential: str, reason: str | None,
                  hours: float, now: datetime | None = None) -> str:
    """Silence an alert's notifications for ``hours`` (0 lifts a silence)."""
    if not 0 <= hours <= MAX_SILENCE_HOURS:
        raise ValidationError(f"hours {hours} must lie in [0, {MAX_SILENCE_HOURS}]",
                              field="hours")
    actor = authenticate_operator(runtime, credential)
    reason = _reason(reason, f"silence alert {alert_id}")
    until = (now or datetime.now(UTC)) + timedelta(hours=hours)
    with session_scope(runtime.sessions) as session:
        engine.silence(session, alert_id, actor=actor, until=until, reason=reason)
    return actor


def check_decision(runtime: Runtime, recommendation_id: int, *, approve: bool,
                   credential: str, reason: str | None) -> tuple[str, str]:
    """What ``decide_rollback`` requires (an operator token, a reason), checked without
    acting: the first step of the page's two-step approval. Returns (operator, reason)."""
    actor = authenticate_operator(runtime, credential)
    what = "approve" if approve else "reject"
    return actor, _reason(reason, f"{what} rollback recommendation {recommendation_id}")


def decide_rollback(runtime: Runtime, recommendation_id: int, *, approve: bool,
                    credential: str, reason: str | None) -> RecommendationInfo:
    """Approve (execute: the alias moves, the deploy hook is called) or reject a pending
    rollback recommendation."""
    actor, reason = check_decision(runtime, recommendation_id, approve=approve,
                                   credential=credential, reason=reason)
    registry = registry_for(runtime)
    if approve:
        return registry.approve(recommendation_id, actor=actor, reason=reason)
    return registry.reject(recommendation_id, actor=actor, reason=reason)


def check_acceptance(runtime: Runtime, incident_id: int, *, credential: str,
                     reason: str | None) -> tuple[str, str]:
    """What ``accept_incident`` requires (an operator token, a reason), checked without
    acting. Returns (operator, reason)."""
    actor = authenticate_operator(runtime, credential)
    return actor, _reason(reason, f"accept incident {incident_id}")


def accept_incident(runtime: Runtime, incident_id: int, *, credential: str, since: date,
                    reason: str | None, config: AlertingConfig, zone: tzinfo
                    ) -> tuple[str, IncidentInfo]:
    """Accept an open incident as a validated change (re-baselines its stratum from
    ``since``, audited): the operator's name and the accepted incident."""
    actor, reason = check_acceptance(runtime, incident_id, credential=credential,
                                     reason=reason)
    with session_scope(runtime.sessions) as session:
        info = incidents.accept_incident(session, incident_id, actor=actor, since=since,
                                         reason=reason, config=config, zone=zone)
    return actor, info
