"""Check and baseline routes over HTTP, on the simulated deployment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from monitor.api import create_app
from monitor.runtime import Runtime
from tests.api.conftest import OPERATOR, VIEWER, store_test_tokens
from tests.conftest import open_runtime
from tests.simdb import MODEL, PREVIOUS, PRODUCTION, SimulatedTemplate


@pytest.fixture
def client(simulated_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(simulated_runtime)) as test_client:
        yield test_client


def test_post_check_runs_and_returns_the_stored_results(
    client: TestClient, simulated_template: SimulatedTemplate
) -> None:
    now = simulated_template.day(12).isoformat()
    response = client.post("/v1/checks", json={"model": MODEL, "window": "1d", "now": now})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == PRODUCTION and body["window_label"] == "1d"
    assert body["replaced"] is False and body["health_status"] in ("green", "amber", "red")
    assert {r["detector"] for r in body["results"]} >= {"MMDDrift", "CategoricalDrift",
                                                        "PerformanceDrift", "SubgroupBias"}
    stored = client.get(f"/v1/checks/{body['id']}").json()
    assert stored["results"] == body["results"]
    again = client.post("/v1/checks", json={"model": MODEL, "window": "1d", "now": now}).json()
    assert again["id"] == body["id"] and again["replaced"] is True

    explicit = client.post("/v1/checks", json={
        "model": MODEL, "version": PREVIOUS, "start": simulated_template.day(11).isoformat(),
        "end": now})
    # an explicit span of exactly one local day is that day's grid window
    assert explicit.status_code == 200 and explicit.json()["window_label"] == "1d"


def test_list_results_filters(client: TestClient, simulated_template: SimulatedTemplate
                              ) -> None:
    everything = client.get("/v1/checks", params={"model": MODEL}).json()
    assert {r["check_run_id"] for r in everything} == set(
        simulated_template.check_run_ids.values())
    start, end = simulated_template.window("new-vendor")
    vendor = client.get("/v1/checks", params={
        "model": MODEL, "version": PRODUCTION, "detector": "CategoricalDrift",
        "feature": "vendor", "start": start.isoformat(), "end": end.isoformat()}).json()
    assert len(vendor) == 1
    assert vendor[0]["check_run_id"] == simulated_template.check_run_ids["new-vendor"]
    assert vendor[0]["drift"] is True and vendor[0]["details"]["reason"] == "new_category"
    drifting = client.get("/v1/checks", params={"model": MODEL, "drift": "true"}).json()
    assert drifting and all(r["drift"] for r in drifting)
    assert client.get("/v1/checks", params={"model": MODEL, "version": PREVIOUS}).json() == []
    runs = client.get("/v1/checks/runs", params={"model": MODEL}).json()
    assert runs[0]["id"] == simulated_template.check_run_ids["late"]
    assert "results" not in runs[0]


def test_report_is_served(client: TestClient, simulated_template: SimulatedTemplate) -> None:
    response = client.get(f"/v1/checks/{simulated_template.check_run_ids['clean']}/report")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "window 1d" in response.text
    assert client.get("/v1/checks/999999/report").status_code == 404
    assert client.get("/v1/checks/999999").status_code == 404


def test_missing_report_and_missing_baseline_are_clear(
    client: TestClient, simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    run_id = simulated_template.check_run_ids["clean"]
    path = client.get(f"/v1/checks/{run_id}").json()["report_path"]
    (Path(simulated_runtime.settings.reports_dir) / path).unlink()
    missing = client.get(f"/v1/checks/{run_id}/report")
    assert missing.status_code == 404 and "missing" in missing.json()["detail"]
    unknown = client.post("/v1/checks", json={"model": MODEL, "version": "7.7.7"})
    assert unknown.status_code == 404 and "7.7.7" in unknown.json()["detail"]
    bad = client.post("/v1/checks", json={"model": MODEL, "window": "fortnight"})
    assert bad.status_code == 422 and bad.json()["field"] == "window"


def test_baselines_are_created_and_listed(client: TestClient,
                                          simulated_template: SimulatedTemplate) -> None:
    created = client.post("/v1/baselines", json={"model": MODEL, "version": PREVIOUS,
                                                 "last": 300})
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["n_studies"] == 300 and body["created_by"] == "anonymous"
    listed = client.get("/v1/baselines", params={"model": MODEL, "version": PREVIOUS}).json()
    assert [b["id"] for b in listed] == [body["id"], simulated_template.baseline_ids[PREVIOUS]]
    ranged = client.post("/v1/baselines", json={
        "model": MODEL, "version": PRODUCTION, "start": simulated_template.day(0).isoformat(),
        "end": simulated_template.day(7).isoformat(), "max_studies": 200})
    assert ranged.status_code == 200 and ranged.json()["n_studies"] == 200
    both = client.post("/v1/baselines", json={"model": MODEL, "last": 10,
                                              "start": simulated_template.day(0).isoformat()})
    assert both.status_code == 422


def test_only_operators_create_baselines(simulated_runtime: Runtime, tmp_path: Path) -> None:
    runtime = open_runtime(simulated_runtime.settings.database_url, tmp_path)
    store_test_tokens(runtime)
    try:
        with TestClient(create_app(runtime)) as client:
            body = {"model": MODEL, "version": PREVIOUS, "last": 200}
            assert client.post("/v1/baselines", json=body, headers=VIEWER).status_code == 403
            assert client.post("/v1/baselines", json=body).status_code == 401
            created = client.post("/v1/baselines", json=body, headers=OPERATOR)
            assert created.status_code == 200 and created.json()["created_by"] == "alice"
            assert client.get("/v1/baselines", headers=VIEWER).status_code == 200
            audit = client.get("/v1/audit", params={"action": "create_baseline"},
                               headers=VIEWER).json()
            assert [(e["actor"], e["details"]["baseline_id"]) for e in audit] == [
                ("alice", created.json()["id"])]
    finally:
        runtime.close()
