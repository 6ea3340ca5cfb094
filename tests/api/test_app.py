"""Ingestion over HTTP: all-or-nothing batches, idempotent retries, clear 4xx answers."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from monitor.api import create_app
from monitor.runtime import Runtime
from tests.api.conftest import INGEST, store_test_tokens, stored
from tests.factories import inference_event, override_event


def test_batch_is_stored_and_retry_is_idempotent(client: TestClient, runtime: Runtime) -> None:
    batch = [inference_event() for _ in range(5)]
    first = client.post("/v1/inferences", json=batch)
    assert first.status_code == 200, first.text
    assert first.json() == {"accepted": 5, "new": 5, "duplicates": 0}
    retry = client.post("/v1/inferences", json=batch)
    assert retry.status_code == 200
    assert retry.json()["accepted"] == 5 and retry.json()["duplicates"] == 5
    assert stored(runtime)["inferences"] == 5


def test_duplicate_inside_one_batch_is_stored_once(client: TestClient, runtime: Runtime) -> None:
    event = inference_event()
    response = client.post("/v1/inferences", json=[event, dict(event)])
    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "new": 1, "duplicates": 1}
    assert stored(runtime)["inferences"] == 1


def _bad(client: TestClient, runtime: Runtime, body: object, *, field: str,
         index: int | None = 1, raw: bytes | None = None) -> dict:
    good = inference_event()
    if raw is not None:
        response = client.post("/v1/inferences", content=raw,
                               headers={"content-type": "application/json"})
    else:
        response = client.post("/v1/inferences", json=[good, body] if index == 1 else body)
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(p["field"].startswith(field) and p["index"] == index for p in problems), problems
    assert stored(runtime)["inferences"] == 0  # nothing of the batch is stored
    return problems[0]


def test_malformed_json(client: TestClient, runtime: Runtime) -> None:
    problem = _bad(client, runtime, None, field="body", index=None, raw=b'[{"event_id": ')
    assert "malformed JSON" in problem["message"]


def test_missing_required_field(client: TestClient, runtime: Runtime) -> None:
    event = inference_event()
    del event["prediction"]
    _bad(client, runtime, event, field="prediction")


def test_wrong_type(client: TestClient, runtime: Runtime) -> None:
    _bad(client, runtime, inference_event(latency_ms="fast"), field="latency_ms")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_score_and_embedding(client: TestClient, runtime: Runtime, value: str) -> None:
    good = json.dumps(inference_event())
    score = inference_event(prediction={"scores": {"pneumothorax": 0.5}})
    raw = json.dumps(score).replace("0.5", value)
    _bad(client, runtime, None, field="prediction.scores", raw=f"[{good}, {raw}]".encode())
    vector = inference_event(embedding=[0.1, 0.2, 0.3])
    raw = json.dumps(vector).replace("0.2", value)
    _bad(client, runtime, None, field="embedding", raw=f"[{good}, {raw}]".encode())


def test_score_outside_unit_interval(client: TestClient, runtime: Runtime) -> None:
    problem = _bad(client, runtime,
                   inference_event(prediction={"scores": {"pneumothorax": 1.2}}),
                   field="prediction.scores")
    assert problem["field"] == "prediction.scores.pneumothorax"
    assert "less than or equal to 1" in problem["message"]


def test_wrong_embedding_length(client: TestClient, runtime: Runtime) -> None:
    assert client.post("/v1/inferences", json=[inference_event()]).status_code == 200
    before = stored(runtime)["inferences"]
    response = client.post("/v1/inferences",
                           json=[inference_event(), inference_event(embedding=[0.0] * 8)])
    assert response.status_code == 422
    problem = response.json()["detail"][0]
    assert problem == {"index": 1, "field": "embedding",
                       "message": "embedding length 8 does not match cxr-triage 1.4.0 "
                       "(expects 16)"}
    assert stored(runtime)["inferences"] == before


def test_wrong_embedding_length_after_a_duplicate_names_its_own_index(
        client: TestClient, runtime: Runtime) -> None:
    first = inference_event(embedding=[0.0] * 4)
    response = client.post("/v1/inferences",
                           json=[first, dict(first), inference_event(embedding=[0.0] * 8)])
    assert response.status_code == 422
    assert [(p["index"], p["field"]) for p in response.json()["detail"]] == [(2, "embedding")]
    assert stored(runtime)["inferences"] == 0


def test_bad_base64(client: TestClient, runtime: Runtime) -> None:
    problem = _bad(client, runtime, inference_event(embedding="not base64!"), field="embedding")
    assert "base64" in problem["message"]
    odd = base64.b64encode(b"12345").decode()
    _bad(client, runtime, inference_event(embedding=odd), field="embedding")


def test_empty_batch(client: TestClient, runtime: Runtime) -> None:
    response = client.post("/v1/inferences", json=[])
    assert response.status_code == 422
    assert response.json()["detail"][0]["message"] == "batch is empty"


def test_oversized_body_gets_413(runtime: Runtime) -> None:
    runtime.settings.max_body_bytes = 2048
    with TestClient(create_app(runtime)) as client:
        response = client.post("/v1/inferences", json=[inference_event() for _ in range(10)])
    assert response.status_code == 413
    assert stored(runtime)["inferences"] == 0


def test_too_many_events(runtime: Runtime) -> None:
    runtime.settings.max_batch_events = 3
    with TestClient(create_app(runtime)) as client:
        response = client.post("/v1/inferences", json=[inference_event() for _ in range(4)])
    assert response.status_code == 422
    assert "MONITOR_MAX_BATCH_EVENTS" in response.json()["detail"][0]["message"]


def test_embedding_list_and_base64_store_the_same_vector(client: TestClient) -> None:
    vector = np.linspace(-1, 1, 16, dtype=np.float32)
    as_list = inference_event(embedding=vector.tolist())
    as_b64 = inference_event(embedding=base64.b64encode(vector.astype("<f4").tobytes()).decode())
    assert client.post("/v1/inferences", json=[as_list, as_b64]).status_code == 200
    rows = client.get("/v1/inferences", params={"model": "cxr-triage",
                                                "include_embedding": True}).json()
    assert len(rows) == 2
    for row in rows:
        np.testing.assert_array_equal(np.asarray(row["embedding"], dtype=np.float32), vector)
    plain = client.get("/v1/inferences", params={"model": "cxr-triage"}).json()
    assert "embedding" not in plain[0]


def test_override_for_unknown_model_is_kept_and_joined_later(
    client: TestClient, runtime: Runtime
) -> None:
    event = inference_event(model="new-model", model_version="0.1.0")
    read = override_event(event["study_uid"], model="new-model")
    assert client.post("/v1/overrides", json=[read]).status_code == 200
    assert stored(runtime)["overrides"] == 1
    assert client.post("/v1/inferences", json=[event]).status_code == 200
    summary = client.get("/v1/models/new-model/summary").json()
    assert summary == [{"day": "2026-11-22", "studies": 1, "positives": 1, "reads": 1,
                        "overrides": 1}]


def test_bad_override_names_the_field(client: TestClient, runtime: Runtime) -> None:
    read = override_event("1.2.3")
    del read["radiologist_positive"]
    response = client.post("/v1/overrides", json=[read])
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "radiologist_positive"
    assert stored(runtime)["overrides"] == 0


def test_read_endpoints_and_openapi(client: TestClient) -> None:
    events = [inference_event(scanner={**inference_event()["scanner"], "site": site})
              for site in ("north", "north", "south")]
    client.post("/v1/inferences", json=events)
    versions = client.get("/v1/models").json()
    assert [(v["model"], v["version"], v["embedding_dim"]) for v in versions] == [
        ("cxr-triage", "1.4.0", 16)
    ]
    by_site = client.get("/v1/models/cxr-triage/summary", params={"by": "site"}).json()
    assert [(row["site"], row["studies"]) for row in by_site] == [("north", 2), ("south", 1)]
    assert client.get("/v1/models/nope/versions/1").status_code == 404
    assert "/v1/inferences" in client.get("/openapi.json").json()["paths"]
    assert client.get("/healthz").json() == {"status": "ok"}


def test_naive_timestamp_is_utc(client: TestClient) -> None:
    client.post("/v1/inferences", json=[inference_event(timestamp="2026-11-22T23:30:00")])
    row = client.get("/v1/inferences", params={"model": "cxr-triage"}).json()[0]
    assert row["ts"].startswith("2026-11-22T23:30:00") and row["ts"].endswith(("Z", "+00:00"))


def test_tokens_required_once_the_store_holds_one(runtime: Runtime) -> None:
    store_test_tokens(runtime)
    with TestClient(create_app(runtime)) as client:
        assert client.post("/v1/inferences", json=[inference_event()]).status_code == 401
        ok = client.post("/v1/inferences", json=[inference_event()], headers=INGEST)
        assert ok.status_code == 200
        assert client.get("/v1/inferences", params={"model": "cxr-triage"},
                          headers=INGEST).status_code == 403


def test_malformed_dicom_header_is_a_422_not_a_crash(client: TestClient, runtime: Runtime
                                                    ) -> None:
    header = {"00080070": {"vr": "LO", "Value": ["GE"]}, "00180060": {"vr": "DS",
                                                                      "Value": ["high"]}}
    event = inference_event(dicom=header)
    response = client.post("/v1/inferences", json=[inference_event(), event])
    assert response.status_code == 422
    problem = response.json()["detail"][0]
    assert problem["index"] == 1 and "dicom" in problem["message"] and "KVP" in problem["message"]
    assert stored(runtime)["inferences"] == 0


@pytest.mark.parametrize("path", [
    "/v1/checks/2147483648",
    "/v1/alerts/2147483648",
    "/v1/rollback-recommendations/2147483648",
    "/v1/alerts?model=m&version=v%00",
    "/v1/checks?model=m&feature=%00",
    "/v1/checks/runs?version=%1f",
    "/v1/rollback-recommendations?model=x%00",
    "/v1/inferences?model=m%00",
    "/v1/models/m%00/versions/v",
])
def test_ids_and_names_the_database_cannot_hold_are_a_422(client: TestClient, path: str) -> None:
    """Ids beyond PostgreSQL's INTEGER and NUL or control characters in names were 500s."""
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["field"].startswith(("path.", "query."))


def test_a_reason_with_a_nul_is_a_422_naming_it(client: TestClient) -> None:
    response = client.post("/v1/models/cxr-triage/versions",
                           json={"version": "2.0.0", "reason": "ok\u0000"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "body.reason"
