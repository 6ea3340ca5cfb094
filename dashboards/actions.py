"""What a person can change from the dashboard, each through the same functions as the API and
the CLI (``monitor.alerting.engine``, ``monitor.registry``), so every action is audited.

Who acts. Each action asks for an operator token, checked as the API checks a bearer token
(``monitor.api.auth.actor_for_token``; the actor must be listed in ``MONITOR_OPERATORS``), and
the token's name is what the audit log records. With no ``MONITOR_API_TOKENS`` configured (the
open demo set-up, where the API itself accepts anyone), the dashboard accepts any non-empty
name in the token field as the operator and records that name.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.alerting import engine
from monitor.api.auth import actor_for_token
from monitor.api.errors import Forbidden, Unauthorized
from monitor.config import Settings
from monitor.errors import ValidationError
from monitor.registry import RecommendationInfo, Registry
from monitor.runtime import Runtime
from monitor.store.db import session_scope

MAX_SILENCE_HOURS = 24 * 30


def authenticate_operator(settings: Settings, credential: str | None) -> str:
    """The operator's name for a token (or, with no tokens configured, the name typed).
    Raises ``Unauthorized`` for an empty or unknown token, ``Forbidden`` for a token whose
    name is not in ``MONITOR_OPERATORS``."""
    credential = (credential or "").strip()
    if not credential:
        raise Unauthorized("an operator token is required")
    if not settings.api_tokens:
        return credential[:128]
    actor = actor_for_token(settings, credential)
    if actor not in settings.operators:
        raise Forbidden(f"{actor!r} is not an operator (MONITOR_OPERATORS)")
    return actor


def _reason(reason: str | None, what: str) -> str:
    if reason is None or not reason.strip():
        raise ValidationError(f"a reason is required to {what}", field="reason")
    return reason.strip()


def acknowledge_alert(runtime: Runtime, alert_id: int, *, credential: str,
                      reason: str | None) -> str:
    """Acknowledge an alert; returns the operator's name."""
    actor = authenticate_operator(runtime.settings, credential)
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
    actor = authenticate_operator(runtime.settings, credential)
    reason = _reason(reason, f"silence alert {alert_id}")
    until = (now or datetime.now(UTC)) + timedelta(hours=hours)
    with session_scope(runtime.sessions) as session:
        engine.silence(session, alert_id, actor=actor, until=until, reason=reason)
    return actor


def decide_rollback(runtime: Runtime, recommendation_id: int, *, approve: bool,
                    credential: str, reason: str | None) -> RecommendationInfo:
    """Approve (execute: the alias moves, the deploy hook is called) or reject a pending
    rollback recommendation."""
    actor = authenticate_operator(runtime.settings, credential)
    what = "approve" if approve else "reject"
    reason = _reason(reason, f"{what} rollback recommendation {recommendation_id}")
    registry = Registry(runtime)
    if approve:
        return registry.approve(recommendation_id, actor=actor, reason=reason)
    return registry.reject(recommendation_id, actor=actor, reason=reason)
