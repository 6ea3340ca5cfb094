"""Who may call what. Every route declares the role it needs with ``Depends(require(role))``;
the dependency answers 401 without a valid bearer token, 403 when the token's role is not
enough, and otherwise gives the token's name, the actor the audit log records. While the
database holds no token at all the API is open and the actor is ``anonymous`` (see
``monitor.store.tokens``).

``route_role(route)`` reads the declared role back from a route, which the role-matrix test
uses to check every route of the app."""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any

from fastapi import Depends, Request

from monitor.api.errors import Forbidden, Unauthorized
from monitor.store.tokens import ANONYMOUS, ROLES, Principal, TokenVerifier


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def verifier(request: Request) -> TokenVerifier:
    """The app's token verifier (``create_app`` makes it)."""
    found: TokenVerifier = request.app.state.token_verifier
    return found


def authenticate(request: Request) -> Principal:
    """The caller: the principal of a valid token, ``anonymous`` in open mode, else 401."""
    tokens = verifier(request)
    if tokens.is_open():  # no token can be valid: one query, not a token lookup as well
        return ANONYMOUS
    token = bearer_token(request)
    principal = None if token is None else tokens.authenticate(token)
    if principal is None:
        raise Unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")
    return principal


class RoleRequirement:
    """A FastAPI dependency that lets through callers holding ``role``; returns their
    name. ``role`` stays readable on the route (``route_role``)."""

    def __init__(self, role: str):
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        self.role = role

    def __call__(self, request: Request) -> str:
        principal = authenticate(request)
        if not principal.may(self.role):
            raise Forbidden(f"token {principal.name!r} may not do this: it needs the "
                            f"{self.role!r} role")
        return principal.name

    def __repr__(self) -> str:
        return f"require({self.role!r})"


@cache
def require(role: str) -> RoleRequirement:
    """The dependency for ``role`` (one instance per role)."""
    return RoleRequirement(role)


def route_role(route: Any) -> str | None:
    """The role a route declares through ``require``, or None."""
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return None
    pending = list(dependant.dependencies)
    while pending:
        dependency = pending.pop()
        if isinstance(dependency.call, RoleRequirement):
            return dependency.call.role
        pending.extend(dependency.dependencies)
    return None


# Route parameter annotations: the caller's name, once it holds the role.
Ingester = Annotated[str, Depends(require("ingest"))]
Reader = Annotated[str, Depends(require("read"))]
Operator = Annotated[str, Depends(require("operator"))]
Admin = Annotated[str, Depends(require("admin"))]

