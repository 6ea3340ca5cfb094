"""Token routes (admin): list tokens, create one (its value is in this answer and nowhere
else), revoke one. Each change is audited with the admin's name."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from monitor.api.auth import Admin, verifier
from monitor.runtime import Runtime
from monitor.store import tokens
from monitor.store.db import session_scope

router = APIRouter(tags=["tokens"])
TokenName = Annotated[str, Path(min_length=1, max_length=64)]


class TokenRequest(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: str = Field(min_length=1, max_length=tokens.MAX_ROLE_LENGTH,
                      description="ingest, read, operator or admin")


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


@router.get("/v1/tokens", summary="Tokens: names, roles, prefixes, created, revoked (admin)")
def list_tokens(request: Request, _actor: Admin) -> list[dict[str, Any]]:
    with session_scope(_runtime(request).sessions) as session:
        return [info.to_dict() for info in tokens.list_tokens(session)]


@router.post("/v1/tokens", status_code=201, summary="Create a token (admin); the answer "
             "holds the token, shown this once")
def create_token(body: TokenRequest, request: Request, response: Response, actor: Admin
                 ) -> dict[str, Any]:
    response.headers["Cache-Control"] = "no-store"
    with session_scope(_runtime(request).sessions) as session:
        token, info = tokens.create_token(session, name=body.name, role=body.role, actor=actor)
    return {**info.to_dict(), "token": token}


@router.delete("/v1/tokens/{name}", summary="Revoke a token (admin)")
def revoke_token(name: TokenName, request: Request, actor: Admin) -> dict[str, Any]:
    with session_scope(_runtime(request).sessions) as session:
        info = tokens.revoke_token(session, name=name, actor=actor)
    verifier(request).forget()
    return info.to_dict()
