"""Incident routes: list and read incidents (the findings of one version that share a cause),
and accept one as a validated change (operators; audited with the token's name)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from monitor.alerting.config import load_config
from monitor.alerting.incidents import accept_incident
from monitor.alerting.notify import deliver_pending
from monitor.api.auth import Operator, Reader
from monitor.api.params import PathId, QueryName, Text
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.incidents import get_incident, list_incidents

router = APIRouter(tags=["incidents"])


class AcceptRequest(BaseModel):
    """Accept the incident's cause (a stratum) as a validated change from ``since`` (a day in
    the site's time zone); ``reason`` is required."""

    since: date
    reason: Text | None = None


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


@router.get("/v1/incidents", summary="List incidents (default: open), most severe and "
            "oldest first")
def incidents(
    request: Request,
    _actor: Reader,
    model: QueryName = None,
    version: QueryName = None,
    state: Literal["open", "resolved", "accepted", "all"] = "open",
    severity: Literal["warning", "critical"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """``state``: open, resolved, accepted or all. Each incident without its findings (see
    ``GET /v1/incidents/{incident_id}``)."""
    with session_scope(_runtime(request).sessions) as session:
        found = list_incidents(session, model=model, version=version,
                               state=None if state == "all" else state, severity=severity,
                               limit=limit)
        return [incident.to_dict() for incident in found]


@router.get("/v1/incidents/{incident_id}", summary="One incident with its findings and "
            "notifications")
def incident(incident_id: PathId, request: Request, _actor: Reader) -> dict[str, Any]:
    with session_scope(_runtime(request).sessions) as session:
        return get_incident(session, incident_id).to_dict()


@router.post("/v1/incidents/{incident_id}/accept", summary="Accept an incident as a "
             "validated change: re-baseline its stratum from a day (operator; needs a reason)")
def accept(incident_id: PathId, body: AcceptRequest, request: Request, actor: Operator
           ) -> dict[str, Any]:
    """409 when the incident is not open or its cause is not a stratum (station, scanner
    model, software version, site, vendor); 422 when the stratum has too few studies from
    ``since`` yet (the answer says how many there are and how many are needed)."""
    runtime = _runtime(request)
    config = load_config(runtime.settings)
    with session_scope(runtime.sessions) as session:
        accepted = accept_incident(session, incident_id, actor=actor, since=body.since,
                                   reason=body.reason, config=config,
                                   zone=runtime.settings.zone,
                                   max_studies=runtime.settings.baseline_max_studies)
    deliver_pending(runtime, config=config)  # its resolution, now that it is committed
    return accepted.to_dict()
