"""The API's input contract at the HTTP level: JSON only, and the ingestion bodies described.

Every POST, PUT and PATCH must say ``Content-Type: application/json`` (a ``charset`` of UTF-8
may follow); anything else is answered 415 before any route runs. Besides keeping other
formats out, this stops cross-origin "simple" requests (``text/plain``, forms, no body at
all), which a browser sends without asking the server first.

The ingestion routes read their raw bodies themselves (``monitor.api.ingest``), so FastAPI
cannot describe them; ``install_contract`` adds their JSON schemas (``monitor.schema``) to
the OpenAPI document so that clients and fuzzers see the real contract.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from monitor_client.events import InferenceEvent, OverrideEvent
from pydantic import TypeAdapter
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from monitor.errors import clip

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_JSON = "application/json"
_UTF8 = frozenset({"utf-8", "utf8"})


def content_type_problem(values: list[str]) -> str | None:
    """Why the Content-Type header values of a request with a body are refused; None when
    the request is JSON."""
    if not values:
        return f"a {'/'.join(sorted(BODY_METHODS))} request must be sent with Content-Type: {_JSON}"
    if len(values) > 1:
        return "Content-Type is given more than once"
    media_type, *parameters = values[0].split(";")
    if media_type.strip().lower() != _JSON:
        return f"Content-Type {clip(media_type.strip())!r} is not accepted: send {_JSON}"
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() not in _UTF8:
            return (f"Content-Type parameter {clip(parameter.strip())!r} is not accepted: "
                    f"send {_JSON} (JSON is UTF-8; charset=utf-8 may be given)")
    return None


class JsonOnlyMiddleware:
    """415 for a POST, PUT or PATCH that is not ``application/json``; other requests pass."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            values = [value.decode("latin-1") for name, value in scope["headers"]
                      if name == b"content-type"]
            problem = content_type_problem(values)
            if problem is not None:
                response = JSONResponse({"detail": problem, "field": "Content-Type"},
                                        status_code=415)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- the ingestion bodies in the OpenAPI document ---------------------------------------------

_COMPONENTS = "#/components/schemas/{model}"
_EVENT_TYPES: dict[str, Any] = {"inferences": InferenceEvent, "overrides": OverrideEvent}


def _event_schema(kind: str) -> dict[str, Any]:
    return TypeAdapter(_EVENT_TYPES[kind]).json_schema(ref_template=_COMPONENTS)


def ingestion_components() -> dict[str, Any]:
    """Component schemas of both event kinds and everything they refer to."""
    components: dict[str, Any] = {}
    for kind, event_type in _EVENT_TYPES.items():
        schema = _event_schema(kind)
        components.update(schema.pop("$defs", {}))
        components[event_type.__name__] = schema
    return components


def ingestion_request_body(kind: str) -> dict[str, Any]:
    """``openapi_extra`` for an ingestion route: its body, a non-empty JSON list of events."""
    name = _EVENT_TYPES[kind].__name__
    return {"requestBody": {"required": True, "content": {_JSON: {"schema": {
        "type": "array", "minItems": 1, "items": {"$ref": _COMPONENTS.format(model=name)},
    }}}}}


def _with_ingestion_components(app: FastAPI, build: Callable[[], dict[str, Any]]
                               ) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in ingestion_components().items():
                if schemas.setdefault(name, schema) != schema:
                    raise RuntimeError(f"two OpenAPI component schemas are named {name}")
            app.openapi_schema = document
        return app.openapi_schema

    return openapi


def install_contract(app: FastAPI) -> None:
    """JSON-only requests, and the ingestion bodies in ``/openapi.json``."""
    app.add_middleware(JsonOnlyMiddleware)
    app.openapi = _with_ingestion_components(app, app.openapi)  # type: ignore[method-assign]
