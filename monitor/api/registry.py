"""Registry routes: versions and aliases, register, promote and roll back, rollback
recommendations (approve / reject by an operator with a reason), and the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from monitor.alerting.rollback import registry_for
from monitor.api.auth import Operator, Reader
from monitor.api.params import MAX_ID, Name, PathId, PathName, QueryName, Text
from monitor.registry import Registry
from monitor.runtime import Runtime
from monitor.vocabulary import PRODUCTION

router = APIRouter(tags=["registry"])


class RegisterRequest(BaseModel):
    version: Name
    status: Name = "candidate"
    embedding_dim: int | None = Field(default=None, ge=1, le=1_000_000)
    notes: Text | None = None
    reason: Text | None = None


class PromoteRequest(BaseModel):
    version: Name
    alias: Name = PRODUCTION
    reason: Text | None = None
    force: bool = False
    alert_id: int | None = Field(default=None, ge=1, le=MAX_ID)


class RollbackRequest(BaseModel):
    """``to_version`` defaults to the last clean version (see ``monitor.registry``)."""

    to_version: Name | None = None
    alias: Name = PRODUCTION
    reason: Text | None = None
    force: bool = False
    alert_id: int | None = Field(default=None, ge=1, le=MAX_ID)


class DecisionRequest(BaseModel):
    reason: Text | None = None
    force: bool = False


def _registry(request: Request) -> Registry:
    runtime: Runtime = request.app.state.runtime
    return registry_for(runtime)


@router.get("/v1/models/{model}/aliases", summary="A model's aliases")
def get_aliases(model: PathName, request: Request, _actor: Reader) -> dict[str, str]:
    return _registry(request).aliases(model)


@router.post("/v1/models/{model}/versions", summary="Register a model version")
def register(model: PathName, body: RegisterRequest, request: Request, actor: Operator
             ) -> dict[str, Any]:
    info = _registry(request).register(model=model, version=body.version, actor=actor,
                                       status=body.status, embedding_dim=body.embedding_dim,
                                       notes=body.notes, reason=body.reason)
    return vars(info)


@router.post("/v1/models/{model}/promote", summary="Point an alias at a version (operator; "
             "needs a reason)")
def promote(model: PathName, body: PromoteRequest, request: Request, actor: Operator
            ) -> dict[str, Any]:
    move = _registry(request).promote(model=model, version=body.version, actor=actor,
                                      reason=body.reason, alias=body.alias, force=body.force,
                                      alert_id=body.alert_id)
    return move.to_dict()


@router.post("/v1/models/{model}/rollback", summary="Roll an alias back now (operator; needs "
             "a reason); calls the deploy hook after the commit")
def rollback(model: PathName, body: RollbackRequest, request: Request, actor: Operator
             ) -> dict[str, Any]:
    rec = _registry(request).rollback(model=model, actor=actor, reason=body.reason,
                                      to_version=body.to_version, alias=body.alias,
                                      force=body.force, alert_id=body.alert_id)
    return rec.to_dict()


@router.get("/v1/rollback-recommendations", summary="Rollback recommendations, newest first")
def recommendations(
    request: Request,
    _actor: Reader,
    model: QueryName = None,
    status: QueryName = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    found = _registry(request).recommendations(model=model, status=status, limit=limit)
    return [rec.to_dict() for rec in found]


@router.get("/v1/rollback-recommendations/{recommendation_id}")
def recommendation(recommendation_id: PathId, request: Request, _actor: Reader) -> dict[str, Any]:
    return _registry(request).recommendation(recommendation_id).to_dict()


@router.post("/v1/rollback-recommendations/{recommendation_id}/approve",
             summary="Approve and execute a rollback (operator; needs a reason)")
def approve(recommendation_id: PathId, body: DecisionRequest, request: Request, actor: Operator
            ) -> dict[str, Any]:
    return _registry(request).approve(recommendation_id, actor=actor, reason=body.reason,
                                      force=body.force).to_dict()


@router.post("/v1/rollback-recommendations/{recommendation_id}/reject",
             summary="Reject a rollback recommendation (operator; needs a reason)")
def reject(recommendation_id: PathId, body: DecisionRequest, request: Request, actor: Operator
           ) -> dict[str, Any]:
    return _registry(request).reject(recommendation_id, actor=actor,
                                     reason=body.reason).to_dict()


@router.post("/v1/rollback-recommendations/{recommendation_id}/retry-hook",
             summary="Re-arm a deploy hook that ran out of attempts (operator)")
def retry_hook(recommendation_id: PathId, body: DecisionRequest, request: Request,
               actor: Operator) -> dict[str, Any]:
    return _registry(request).retry_hook(recommendation_id, actor=actor,
                                         reason=body.reason).to_dict()


@router.get("/v1/audit", summary="The audit log, newest first")
def audit(
    request: Request,
    _actor: Reader,
    model: QueryName = None,
    action: QueryName = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> list[dict[str, Any]]:
    return [entry.to_dict() for entry in _registry(request).audit(model=model, action=action,
                                                                   limit=limit)]
