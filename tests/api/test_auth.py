"""Authentication over HTTP: bearer tokens from the store, the admin's token routes, open mode,
legacy MONITOR_API_TOKENS after an upgrade, operator actions audited with the token's name,
and bounded integers in paths and queries."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from monitor import registry
from monitor.api import create_app
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from tests.api.conftest import ADMIN, INGEST, OPERATOR, VIEWER, store_test_tokens
from tests.api.test_roles import endpoints
from tests.conftest import open_runtime
from tests.factories import inference_event
from tests.simdb import MODEL, SimulatedTemplate


def audit(runtime: Runtime) -> list[tuple[str, str]]:
    with session_scope(runtime.sessions) as session:
        return [(e.action, e.actor) for e in registry.list_audit(session, limit=1000)]


def test_admin_creates_uses_lists_and_revokes_a_token(token_client: TestClient,
                                                      runtime: Runtime) -> None:
    refused = token_client.post("/v1/tokens", json={"name": "ci", "role": "ingest"},
                                headers=OPERATOR)
    assert refused.status_code == 403
    made = token_client.post("/v1/tokens", json={"name": "ci", "role": "ingest"}, headers=ADMIN)
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    token = made.json()["token"]
    ci = {"Authorization": f"Bearer {token}"}
    assert token_client.post("/v1/inferences", json=[inference_event()],
                             headers=ci).status_code == 200
    assert token_client.get("/v1/models", headers=ci).status_code == 403
    listed = token_client.get("/v1/tokens", headers=ADMIN).json()
    assert {t["name"]: t["role"] for t in listed} == {
        "ingest-bot": "ingest", "viewer": "read", "alice": "operator", "root": "admin",
        "ci": "ingest"}
    assert all(set(t) == {"name", "role", "prefix", "created_at", "created_by",
                          "revoked_at", "active"} for t in listed)
    duplicate = token_client.post("/v1/tokens", json={"name": "ci", "role": "read"},
                                  headers=ADMIN)
    assert duplicate.status_code == 409
    bad_role = token_client.post("/v1/tokens", json={"name": "x", "role": "root"},
                                 headers=ADMIN)
    assert bad_role.status_code == 422 and bad_role.json()["field"] == "role"

    revoked = token_client.delete("/v1/tokens/ci", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert token_client.post("/v1/inferences", json=[inference_event()],
                             headers=ci).status_code == 401  # at once in this process
    assert token_client.delete("/v1/tokens/ci", headers=ADMIN).status_code == 409
    assert token_client.delete("/v1/tokens/nobody", headers=ADMIN).status_code == 404

    entries = audit(runtime)
    assert ("token-create", "root") in entries and ("token-revoke", "root") in entries
    # ingestion batches are counted in metrics, not written to the audit log
    assert not [e for e in entries if "ingest" in e[0] or "inference" in e[0]]
    with session_scope(runtime.sessions) as session:
        details = [str(e.details) for e in registry.list_audit(session)]
    assert not [d for d in details if token in d]


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc",
                                    "Bearer " + "x" * 5000])
def test_malformed_credentials_are_401(token_client: TestClient, header: str) -> None:
    response = token_client.get("/v1/models", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_scheme_is_case_insensitive(token_client: TestClient) -> None:
    token = VIEWER["Authorization"].split(" ", 1)[1]
    assert token_client.get("/v1/models", headers={"Authorization": f"bearer {token}"}
                            ).status_code == 200


def test_open_mode_acts_as_anonymous(runtime: Runtime) -> None:
    with TestClient(create_app(runtime)) as client:
        assert client.post("/v1/alerts/deliver", json={}).status_code == 200
        made = client.post("/v1/tokens", json={"name": "first-admin", "role": "admin"})
        assert made.status_code == 201
        # the first token closes the open mode
        assert client.post("/v1/alerts/deliver", json={}).status_code == 401
        assert client.post("/v1/alerts/deliver", json={}, headers={
            "Authorization": f"Bearer {made.json()['token']}"}).status_code == 200
    assert audit(runtime)[-2:] == [("token-create", "anonymous"),
                                   ("deliver_alerts", "anonymous")]


def test_legacy_tokens_keep_working_after_an_upgrade(database_url: str,
                                                     tmp_path: Path) -> None:
    legacy = {"ops": SecretStr("o" * 40), "collector": SecretStr("c" * 40)}
    runtime = open_runtime(database_url, tmp_path, api_tokens=legacy, operators=["ops"])
    ops = {"Authorization": "Bearer " + "o" * 40}
    collector = {"Authorization": "Bearer " + "c" * 40}
    try:
        for _ in range(2):  # two starts: imported once
            with TestClient(create_app(runtime)) as client:
                assert client.get("/v1/models").status_code == 401
                assert client.post("/v1/inferences", json=[inference_event()],
                                   headers=collector).status_code == 200
                assert client.get("/v1/models", headers=collector).status_code == 200
                deliver = "/v1/alerts/deliver"
                assert client.post(deliver, json={}, headers=collector).status_code == 403
                assert client.post(deliver, json={}, headers=ops).status_code == 200
                assert client.post("/v1/inferences", json=[inference_event()],
                                   headers=ops).status_code == 403
        assert [a for a in audit(runtime) if a[0] == "token-import"] == [
            ("token-import", "system")] * 2
    finally:
        runtime.close()


@pytest.fixture
def simulated_client(simulated_runtime: Runtime) -> Iterator[TestClient]:
    store_test_tokens(simulated_runtime)
    with TestClient(create_app(simulated_runtime)) as client:
        yield client


def test_checks_need_an_operator_and_are_audited(simulated_client: TestClient,
                                                 simulated_runtime: Runtime,
                                                 simulated_template: SimulatedTemplate) -> None:
    body = {"model": MODEL, "window": "1d", "now": simulated_template.day(12).isoformat()}
    for role in (INGEST, VIEWER):
        assert simulated_client.post("/v1/checks", json=body, headers=role).status_code == 403
    ran = simulated_client.post("/v1/checks", json=body, headers=OPERATOR)
    assert ran.status_code == 200, ran.text
    with session_scope(simulated_runtime.sessions) as session:
        (entry,) = registry.list_audit(session, action="run_check")
    assert (entry.actor, entry.model, entry.details["check_run_id"]) == (
        "alice", MODEL, ran.json()["id"])


def test_integers_beyond_the_database_are_422(token_client: TestClient) -> None:
    """Every path id and integer query of every route, at 2^63 and 2^64: 422, never 500."""
    tried = 0
    for method, path, route in endpoints(token_client.app):  # type: ignore[arg-type]
        dependant = route.dependant
        ints = [p.name for p in dependant.path_params if p.field_info.annotation is int]
        queries = [p.name for p in dependant.query_params if p.field_info.annotation is int]
        for huge in (2**63, 2**64):
            for name in ints:
                url = re.sub(r"\{(\w+)\}", lambda m, n=name, h=huge: str(h) if m.group(1) == n
                             else ("1" if m.group(1).endswith("_id") else "x"), path)
                response = token_client.request(method, url, headers={
                    **ADMIN, "Content-Type": "application/json"},
                    content="{}" if method == "POST" else None)
                assert response.status_code == 422, (method, url, response.text)
                tried += 1
            for name in queries:
                url = re.sub(r"\{(\w+)\}", lambda m: "1" if m.group(1).endswith("_id")
                             else "x", path)
                response = token_client.request(method, url, params={name: str(huge)},
                                                headers=ADMIN)
                assert response.status_code == 422, (method, url, name, response.text)
                tried += 1
    assert tried >= 20


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_times_that_overflow_in_utc_are_422(token_client: TestClient, when: str) -> None:
    """Every time in a query or a body of the read and check routes."""
    tried = 0
    for method, path, route in endpoints(token_client.app):  # type: ignore[arg-type]
        url = re.sub(r"\{(\w+)\}", lambda m: "1" if m.group(1).endswith("_id") else "x", path)
        for param in route.dependant.query_params:
            if param.name in ("start", "end"):
                response = token_client.request(method, url, headers=ADMIN,
                                                params={"model": "x", param.name: when})
                assert response.status_code == 422, (url, param.name, response.text)
                tried += 1
    for path, field in (("/v1/checks", "now"), ("/v1/checks", "start"),
                        ("/v1/baselines", "end"), ("/v1/alerts/1/silence", "until")):
        response = token_client.post(path, headers=ADMIN, json={
            "model": "x", field: when, "reason": "r"})
        assert response.status_code == 422, (path, field, response.text)
        tried += 1
    assert tried >= 14
