"""Bearer tokens: ``MONITOR_API_TOKENS`` maps a name to a token; the name is the actor in the
audit log. With no tokens configured the API is open and the actor is ``anonymous``."""

from __future__ import annotations

import hmac

from fastapi import Request

from monitor.api.errors import Forbidden, Unauthorized
from monitor.config import Settings


def actor_for_token(settings: Settings, token: str | None) -> str:
    if not settings.api_tokens:
        return "anonymous"
    if token:
        for name, secret in settings.api_tokens.items():
            if hmac.compare_digest(token.encode(), secret.get_secret_value().encode()):
                return name
    raise Unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")


def current_actor(request: Request) -> str:
    """FastAPI dependency: the name of the caller's token."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    return actor_for_token(request.app.state.runtime.settings, token)


def require_operator(request: Request) -> str:
    """FastAPI dependency for promotions, rollbacks and acknowledgements."""
    actor = current_actor(request)
    settings: Settings = request.app.state.runtime.settings
    if settings.api_tokens and actor not in settings.operators:
        raise Forbidden(f"{actor!r} is not an operator (MONITOR_OPERATORS)")
    return actor
