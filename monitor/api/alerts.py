"""Alert routes: list and read alerts, acknowledge and silence them (operators; audited),
and run one delivery pass."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from monitor.alerting import engine
from monitor.alerting.config import parse_duration
from monitor.api.auth import Operator, Reader
from monitor.api.params import PathId, QueryName, Text
from monitor.errors import ConfigError, ValidationError
from monitor.runtime import Runtime
from monitor.store.audit import record_audit
from monitor.store.db import session_scope

router = APIRouter(tags=["alerts"])
MAX_SILENCE = timedelta(days=365)


class AcknowledgeRequest(BaseModel):
    reason: Text | None = None


class SilenceRequest(BaseModel):
    """Silence until ``until``, or for ``duration`` (``"30m"``, ``"2h"``, seconds)."""

    until: datetime | None = None
    duration: str | float | None = None
    reason: Text | None = None


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def silence_until(until: datetime | None, duration: str | float | None, *, now: datetime
                  ) -> datetime:
    """The end of a silence, at most ``MAX_SILENCE`` ahead of ``now``."""
    if (until is None) == (duration is None):
        raise ValidationError("give exactly one of until and duration", field="until")
    if until is not None:
        try:
            until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
        except OverflowError:
            raise ValidationError("until is out of range once converted to UTC",
                                  field="until") from None
        if until - now > MAX_SILENCE:
            raise ValidationError(f"until must lie within {MAX_SILENCE.days} days from now",
                                  field="until")
        return until
    try:
        seconds = parse_duration(duration, field="duration")
    except ConfigError as exc:
        raise ValidationError(str(exc), field="duration") from None
    if not math.isfinite(seconds) or seconds > MAX_SILENCE.total_seconds():
        raise ValidationError(f"duration must be at most {MAX_SILENCE.days} days "
                              f"({int(MAX_SILENCE.total_seconds())} seconds)", field="duration")
    return now + timedelta(seconds=seconds)


@router.get("/v1/alerts", summary="List alerts (default: pending and firing)")
def list_alerts(
    request: Request,
    _actor: Reader,
    state: str | None = "active",
    model: QueryName = None,
    version: QueryName = None,
    severity: QueryName = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """``state``: active (pending or firing), pending, firing, resolved or all."""
    with session_scope(_runtime(request).sessions) as session:
        found = engine.list_alerts(session, state=None if state == "all" else state,
                                   model=model, version=version, severity=severity,
                                   limit=limit)
        return [alert.to_dict() for alert in found]


@router.get("/v1/alerts/{alert_id}", summary="One alert with its notifications")
def get_alert(alert_id: PathId, request: Request, _actor: Reader) -> dict[str, Any]:
    with session_scope(_runtime(request).sessions) as session:
        return engine.get_alert(session, alert_id).to_dict()


@router.post("/v1/alerts/{alert_id}/acknowledge", summary="Acknowledge an alert (operator)")
def acknowledge(alert_id: PathId, body: AcknowledgeRequest, request: Request, actor: Operator
                ) -> dict[str, Any]:
    with session_scope(_runtime(request).sessions) as session:
        return engine.acknowledge(session, alert_id, actor=actor, reason=body.reason).to_dict()


@router.post("/v1/alerts/{alert_id}/silence", summary="Silence an alert's notifications "
             "until a time (operator; needs a reason)")
def silence(alert_id: PathId, body: SilenceRequest, request: Request, actor: Operator
            ) -> dict[str, Any]:
    now = datetime.now(UTC)
    until = silence_until(body.until, body.duration, now=now)
    with session_scope(_runtime(request).sessions) as session:
        return engine.silence(session, alert_id, actor=actor, until=until, reason=body.reason,
                              now=now).to_dict()


@router.post("/v1/alerts/deliver", summary="Send due notifications and deploy hooks now "
             "(operator)")
def deliver(request: Request, actor: Operator) -> dict[str, Any]:
    runtime = _runtime(request)
    report = engine.deliver_due(runtime)
    answer = {"resent": report.resent, "notifications": vars(report.delivery),
              "deploy_hooks": vars(report.hooks)}
    with session_scope(runtime.sessions) as session:
        record_audit(session, actor=actor, action="deliver_alerts", details=answer)
    return answer
