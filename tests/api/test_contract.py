"""The input contract through the real HTTP app: JSON only, every bad-input class answered 4xx
naming the field with nothing stored, no input echoed, and the ingestion bodies in the
OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from monitor.api import create_app
from monitor.api.contract import content_type_problem
from monitor.api.errors import request_problems
from monitor.runtime import Runtime
from tests.api.conftest import stored
from tests.factories import inference_event, override_event


@pytest.fixture
def sqlite_client(sqlite_runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_runtime)) as test_client:
        yield test_client


def _stored(runtime: Runtime) -> tuple[int, int]:
    counts = stored(runtime)
    return counts["inferences"], counts["overrides"]


JSON = {"Content-Type": "application/json"}

# --- JSON only ---------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/json; charset=latin-1", "application/jsonp", "text/json",
])
def test_ingestion_refuses_anything_but_json(sqlite_client: TestClient, sqlite_runtime: Runtime,
                                             content_type: str | None) -> None:
    body = json.dumps([inference_event()]).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    for path in ("/v1/inferences", "/v1/overrides"):
        response = sqlite_client.post(path, content=body, headers=headers)
        assert response.status_code == 415, response.text
        assert response.json()["field"] == "Content-Type"
        assert "application/json" in response.json()["detail"]
    assert _stored(sqlite_runtime) == (0, 0)


def test_every_write_method_needs_json(sqlite_client: TestClient) -> None:
    """Not only ingestion: a body-less POST is what a cross-origin page can send unasked."""
    assert sqlite_client.post("/v1/checks").status_code == 415
    assert sqlite_client.post("/v1/alerts/deliver").status_code == 415
    assert sqlite_client.put("/v1/models", content=b"{}",
                             headers={"Content-Type": "text/plain"}).status_code == 415
    assert sqlite_client.patch("/v1/models").status_code == 415
    assert sqlite_client.get("/v1/models").status_code == 200  # reads need no Content-Type


@pytest.mark.parametrize("content_type", [
    "application/json", "Application/JSON", "application/json; charset=utf-8",
    'application/json;charset="UTF-8"',
])
def test_json_with_or_without_a_utf8_charset_is_accepted(sqlite_client: TestClient,
                                                         content_type: str) -> None:
    response = sqlite_client.post("/v1/inferences", headers={"Content-Type": content_type},
                                  content=json.dumps([inference_event()]).encode())
    assert response.status_code == 200, response.text


def test_content_type_problems() -> None:
    assert content_type_problem(["application/json"]) is None
    assert "more than once" in (content_type_problem(["application/json"] * 2) or "")
    assert "charset=utf-8" in (content_type_problem(["application/json; v=1"]) or "")
    assert len(content_type_problem(["text/" + "x" * 10_000]) or "") < 300


# --- every bad-input class, through the HTTP app ------------------------------------------------

def _with_scanner(**changes: Any) -> dict[str, Any]:
    return inference_event(scanner={**inference_event()["scanner"], **changes})


def _raw(event: dict[str, Any], marker: str, replacement: str) -> bytes:
    """A batch whose JSON text has ``marker`` (a quoted string) replaced: NaN, Infinity,
    duplicate keys and the like, which ``json.dumps`` would not write."""
    text = json.dumps([inference_event(), event])
    assert f'"{marker}"' in text
    return text.replace(f'"{marker}"', replacement).encode()


# (path, body as bytes, the field the 422 names): one bad item after a good one
BadInput = tuple[str, Callable[[], bytes], str]
INF, OVR = "/v1/inferences", "/v1/overrides"


def _inference(**change: Any) -> Callable[[], bytes]:
    return lambda: json.dumps([inference_event(), inference_event(**change)]).encode()


def _override(**change: Any) -> Callable[[], bytes]:
    return lambda: json.dumps([override_event("1.2.3"),
                               {**override_event("1.2.4"), **change}]).encode()


BAD_INPUTS: dict[str, BadInput] = {
    # NUL: PostgreSQL cannot store it in text
    "nul-in-event-id": (INF, _inference(event_id="e\x001"), "event_id"),
    "nul-in-site": (INF, lambda: json.dumps([inference_event(),
                                           _with_scanner(site="north\x00")]).encode(),
                    "scanner.site"),
    "nul-in-finding": (OVR, _override(finding="pneumo\x00thorax"), "finding"),
    "nul-in-extra-key-value": (INF, lambda: json.dumps([inference_event(),
                                                      _with_scanner(detector="D\x00")]).encode(),
                               "scanner.detector"),
    # non-finite numbers, in extra scanner keys too
    "nan-in-extra-key": (INF, lambda: _raw(_with_scanner(noise="X"), "X", "NaN"),
                         "scanner.noise"),
    "infinity-in-extra-key": (INF, lambda: _raw(_with_scanner(noise="X"), "X", "Infinity"),
                              "scanner.noise"),
    "1e309-in-extra-key": (INF, lambda: _raw(_with_scanner(noise="X"), "X", "1e309"),
                           "scanner.noise"),
    "nan-score": (INF, lambda: _raw(inference_event(prediction={"scores": {"p": "X"}}), "X", "NaN"),
                  "prediction.scores.p"),
    # timestamps: offsets that overflow, numbers, out of the plausible range
    "offset-overflow-low": (INF, _inference(timestamp="0001-01-01T00:00:00+14:00"), "timestamp"),
    "offset-overflow-high": (INF, _inference(timestamp="9999-12-31T23:59:59-14:00"), "timestamp"),
    "override-offset-overflow-low": (OVR, _override(timestamp="0001-01-01T00:00:00+14:00"),
                                     "timestamp"),
    "override-offset-overflow-high": (OVR, _override(timestamp="9999-12-31T23:59:59-14:00"),
                                      "timestamp"),
    "timestamp-as-number": (INF, _inference(timestamp=1_764_000_000), "timestamp"),
    "override-timestamp-as-number": (OVR, _override(timestamp=1_764_000_000), "timestamp"),
    "timestamp-in-9999": (INF, _inference(timestamp="9999-01-01T00:00:00Z"), "timestamp"),
    "timestamp-before-1990": (INF, _inference(timestamp="1970-01-01T00:00:00Z"), "timestamp"),
    # booleans are not numbers
    "true-as-kvp": (INF, lambda: json.dumps([inference_event(), _with_scanner(kvp=True)]).encode(),
                    "scanner.kvp"),
    "true-as-score": (INF, _inference(prediction={"scores": {"p": True}}), "prediction.scores.p"),
    # duplicate keys, at the top of an event and deeper
    "duplicate-event-id": (INF, lambda: _raw(inference_event(event_id="X"), "X",
                                           '"a", "event_id": "b"'), "event_id"),
    "duplicate-scanner-key": (INF, lambda: _raw(_with_scanner(site="X"), "X",
                                              '"a", "site": "b"'), "scanner.site"),
    "override-duplicate-key": (OVR, lambda: json.dumps([override_event("1.2.3"),
                                                      override_event("1.2.4", reader="X")])
                               .replace('"X"', '"a", "reader": "b"').encode(), "reader"),
    # control and invisible characters in identifiers
    "escape-in-study-uid": (INF, _inference(study_uid="1.2.3\x1b[2J"), "study_uid"),
    "zero-width-in-event-id": (INF, _inference(event_id="e\u200b1"), "event_id"),
    "bidi-override-in-reader": (OVR, _override(reader="r\u202e71"), "reader"),
    # lengths
    "long-event-id": (INF, _inference(event_id="e" * 129), "event_id"),
    "long-patient-id": (INF, _inference(patient={"id": "P" * 300}), "patient.id"),
    "long-station": (INF, lambda: json.dumps([inference_event(),
                                            _with_scanner(station="S" * 17)]).encode(),
                     "scanner.station"),
    "50-mb-tags": (INF, lambda: json.dumps([inference_event(),
                                          _with_scanner(detector="x" * 50_000_000)]).encode(),
                   "scanner"),
    "1-mb-score-name": (INF, _inference(prediction={"scores": {"s" * 1_000_000: 0.5}}),
                        "prediction.scores.s"),
}

# The classes that were server errors on PostgreSQL: run there too.
ON_POSTGRES = ("nul-in-event-id", "nul-in-site", "nul-in-finding", "nul-in-extra-key-value",
               "nan-in-extra-key", "infinity-in-extra-key", "1e309-in-extra-key",
               "offset-overflow-low", "offset-overflow-high", "override-offset-overflow-low",
               "override-offset-overflow-high")


def _assert_refused(client: TestClient, runtime: Runtime, case: BadInput) -> None:
    path, body, field = case
    raw = body()
    response = client.post(path, content=raw, headers=JSON)
    assert response.status_code == 422, response.text[:500]
    problems = response.json()["detail"]
    assert [p["index"] for p in problems] == [1], problems
    assert problems[0]["field"].startswith(field), problems
    assert len(response.content) < 1_000  # no input echoed back
    assert _stored(runtime) == (0, 0)


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_each_bad_input_class_is_a_422_naming_the_field(sqlite_client: TestClient,
                                                        sqlite_runtime: Runtime,
                                                        name: str) -> None:
    _assert_refused(sqlite_client, sqlite_runtime, BAD_INPUTS[name])


@pytest.mark.postgres
@pytest.mark.parametrize("name", ON_POSTGRES)
def test_former_server_errors_are_422_on_postgresql(postgres_url: str, tmp_path,
                                                    name: str) -> None:
    from tests.conftest import open_runtime

    runtime = open_runtime(postgres_url, tmp_path)
    try:
        with TestClient(create_app(runtime)) as client:
            _assert_refused(client, runtime, BAD_INPUTS[name])
    finally:
        runtime.close()


def test_the_good_event_of_a_refused_batch_is_stored_alone(client: TestClient,
                                                           runtime: Runtime) -> None:
    """What a client (the SDK) does with the 422: re-send the rest; it is stored."""
    good, bad = inference_event(), _with_scanner(site="north\x00")
    assert client.post(INF, json=[good, bad]).status_code == 422
    response = client.post(INF, json=[good])
    assert response.status_code == 200 and response.json()["new"] == 1
    assert _stored(runtime) == (1, 0)


def test_a_patient_id_over_256_characters_is_not_echoed(sqlite_client: TestClient) -> None:
    patient_id = "PATIENT-" + "9" * 300
    header = {"00100020": {"vr": "LO", "Value": [patient_id]}}
    for event in (inference_event(patient={"id": patient_id}),
                  inference_event(dicom=header, patient=None)):
        response = sqlite_client.post(INF, json=[event])
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] == "patient.id"
        assert "9" * 65 not in response.text


def test_fastapi_validation_errors_echo_no_input(sqlite_client: TestClient) -> None:
    response = sqlite_client.post("/v1/checks", json={"model": "P" * 300, "now": "Q" * 300})
    assert response.status_code == 422
    assert "P" * 65 not in response.text and "Q" * 65 not in response.text
    problems = request_problems([{"loc": ("body", "k" * 10_000), "msg": "m" * 10_000,
                                  "input": "secret"}])
    assert len(problems[0]["field"]) < 100 and len(problems[0]["message"]) < 300
    assert "secret" not in json.dumps(problems)


def test_the_timestamp_range_follows_the_settings(sqlite_runtime: Runtime) -> None:
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={
        "timestamp_max_future_s": 100 * 365 * 86_400})
    with TestClient(create_app(sqlite_runtime)) as client:
        response = client.post(INF, json=[inference_event(timestamp="2100-01-01T00:00:00Z")])
    assert response.status_code == 200, response.text


# --- event_id unique per model ------------------------------------------------------------------

def test_another_models_event_with_the_same_id_is_stored(client: TestClient,
                                                         runtime: Runtime) -> None:
    first = inference_event(event_id="shared-id")
    second = inference_event(event_id="shared-id", model="fracture-detect")
    assert client.post(INF, json=[first]).json() == {"accepted": 1, "new": 1, "duplicates": 0}
    assert client.post(INF, json=[second, second]).json() == {
        "accepted": 1, "new": 1, "duplicates": 1}
    read = override_event(first["study_uid"], event_id="shared-read")
    assert client.post(OVR, json=[read, {**read, "model": "fracture-detect"}]).json() == {
        "accepted": 2, "new": 2, "duplicates": 0}
    assert _stored(runtime) == (2, 2)


# --- the OpenAPI document ------------------------------------------------------------------------

def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_ingestion_bodies_are_in_the_openapi_document(sqlite_client: TestClient) -> None:
    document = sqlite_client.get("/openapi.json").json()
    components = document["components"]["schemas"]
    for path, name in ((INF, "InferenceEvent"), (OVR, "OverrideEvent")):
        body = document["paths"][path]["post"]["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        assert body["required"] and schema["type"] == "array" and schema["minItems"] == 1
        assert schema["items"] == {"$ref": f"#/components/schemas/{name}"}
    event = components["InferenceEvent"]
    assert {"event_id", "model", "timestamp", "prediction"} <= set(event["required"])
    assert event["properties"]["event_id"]["maxLength"] == 128
    for ref in _refs(document):
        assert ref.removeprefix("#/components/schemas/") in components, ref
