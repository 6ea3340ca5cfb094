"""The role matrix, generated from the app's route table: every route × every role × no token
and a wrong token. A route that declares no role (``Depends(require(role))``) fails here.

With ``ROLE_MATRIX_OUT=path`` the observed matrix is also written there as a Markdown table
(docs/security.md includes it)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

try:  # FastAPI keeps included routers whole in app.routes from 0.16x on
    from fastapi.routing import iter_route_contexts
except ImportError:  # pragma: no cover - older FastAPI lists every route in app.routes
    def iter_route_contexts(routes: Any) -> Any:  # type: ignore[misc]
        return iter(routes)
from fastapi.testclient import TestClient

from monitor.api import create_app
from monitor.api.auth import route_role
from monitor.runtime import Runtime
from monitor.store.tokens import GRANTS, ROLES, new_token
from tests.api.conftest import HEADERS, store_test_tokens
from tests.conftest import open_runtime

# Unauthenticated on purpose: liveness and readiness probes, the API's own description, and
# the home page that links them (``monitor.api.home``: nothing from the database).
PUBLIC_PATHS = {"/", "/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                "/redoc"}
PATH_VALUES = {"model": "cxr-triage", "version": "1.0.0", "name": "nobody"}
CALLERS = (*ROLES, "no token", "wrong token")


def all_routes(app: FastAPI) -> list[Any]:
    """Every route of the app, those of included routers too (FastAPI keeps an included
    router as one entry of ``app.routes``; its route contexts carry the full path and the
    effective dependencies)."""
    return list(iter_route_contexts(app.routes))


def is_api_route(route: Any) -> bool:
    return isinstance(getattr(route, "original_route", route), APIRoute)


def endpoints(app: FastAPI) -> list[tuple[str, str, Any]]:
    """(method, path, route) for every API route but the public ones."""
    found = []
    for route in all_routes(app):
        if is_api_route(route) and route.path not in PUBLIC_PATHS:
            for method in sorted(set(route.methods) - {"HEAD", "OPTIONS"}):
                found.append((method, route.path, route))
    return sorted(found, key=lambda item: (item[1], item[0]))


def undeclared(app: FastAPI) -> list[str]:
    """Routes that are neither public nor declare a role."""
    return [route.path for route in all_routes(app) if route.path not in PUBLIC_PATHS
            and (not is_api_route(route) or route_role(route) is None)]


def concrete(path: str) -> str:
    """A request path for a route's template: ids 1, names from ``PATH_VALUES``."""
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m.group(1), "1"), path)


def outcome(status: int) -> str:
    return {401: "401", 403: "403"}.get(status, "allowed")


def call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> int:
    headers = {**headers, "Content-Type": "application/json"}
    body = "[]" if path in ("/v1/inferences", "/v1/overrides") else "{}"
    content = body if method in ("POST", "PUT", "PATCH") else None
    return client.request(method, concrete(path), headers=headers, content=content).status_code


def caller_headers(caller: str) -> dict[str, str]:
    if caller in HEADERS:
        return HEADERS[caller]
    if caller == "wrong token":
        return {"Authorization": f"Bearer {new_token()}"}
    return {}


def expected(required: str, caller: str) -> str:
    if caller in ("no token", "wrong token"):
        return "401"
    return "allowed" if required in GRANTS[caller] else "403"


@pytest.fixture
def guarded(sqlite_url: str, tmp_path: Path) -> Iterator[TestClient]:
    runtime = open_runtime(sqlite_url, tmp_path)
    store_test_tokens(runtime)
    try:
        with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
            yield client
    finally:
        runtime.close()


def test_every_route_declares_a_role(runtime: Runtime) -> None:
    app = create_app(runtime)
    assert undeclared(app) == []
    assert {"/", "/healthz", "/openapi.json"} <= {route.path for route in all_routes(app)}
    assert len(endpoints(app)) >= 30
    assert {route_role(r) for _, _, r in endpoints(app)} == set(ROLES)


def test_incident_routes_read_and_accept_with_their_roles(runtime: Runtime) -> None:
    roles = {(method, path): route_role(route)
             for method, path, route in endpoints(create_app(runtime))}
    assert {key: role for key, role in roles.items() if "/v1/incidents" in key[1]} == {
        ("GET", "/v1/incidents"): "read",
        ("GET", "/v1/incidents/{incident_id}"): "read",
        ("POST", "/v1/incidents/{incident_id}/accept"): "operator",
    }


def test_a_route_without_a_role_is_caught(runtime: Runtime) -> None:
    app = create_app(runtime)
    stray = APIRouter()

    @stray.get("/v1/forgotten")
    def forgotten() -> dict[str, Any]:
        return {}

    app.include_router(stray)
    assert undeclared(app) == ["/v1/forgotten"]


def test_role_matrix(guarded: TestClient) -> None:
    rows, wrong = [], []
    for method, path, route in endpoints(guarded.app):  # type: ignore[arg-type]
        required = route_role(route)
        assert required is not None, f"{method} {path} declares no role"
        observed = {}
        for caller in CALLERS:
            status = call(guarded, method, path, caller_headers(caller))
            observed[caller] = outcome(status)
            assert status != 500, f"{method} {path} as {caller}: 500"
            if observed[caller] != expected(required, caller):
                wrong.append(f"{method} {path} as {caller}: {status}, expected "
                             f"{expected(required, caller)}")
        rows.append((method, path, required, observed))
    assert wrong == []
    if target := os.environ.get("ROLE_MATRIX_OUT"):
        Path(target).write_text(markdown_table(rows), encoding="utf-8")


def test_open_mode_lets_every_route_through_without_a_token(runtime: Runtime) -> None:
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        for method, path, _route in endpoints(client.app):  # type: ignore[arg-type]
            status = call(client, method, path, {})
            assert status not in (401, 403, 500), f"{method} {path}: {status}"


def markdown_table(rows: list[tuple[str, str, str | None, dict[str, str]]]) -> str:
    mark = {"allowed": "✓", "401": "401", "403": "403"}
    lines = ["| Method | Path | Role | " + " | ".join(CALLERS) + " |",
             "|---|---|---|" + "---|" * len(CALLERS)]
    for method, path, required, observed in rows:
        cells = " | ".join(mark[observed[c]] for c in CALLERS)
        lines.append(f"| {method} | `{path}` | {required} | {cells} |")
    return "\n".join(lines) + "\n"
