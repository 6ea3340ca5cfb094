from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from monitor_client.codec import decode_embedding, encode_embedding
from monitor_client.events import embedding_dim

from monitor.errors import BatchValidationError
from monitor.schema import INFERENCES, OVERRIDES, TimestampBounds
from tests.factories import inference_event, override_event


def test_base64_and_list_embeddings_decode_to_the_same_bytes() -> None:
    vector = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    events = INFERENCES.from_python([inference_event(embedding=vector.tolist()),
                                     inference_event(embedding=encode_embedding(vector))])
    assert events[0]["embedding"] == events[1]["embedding"] == vector.astype("<f4").tobytes()
    np.testing.assert_array_equal(decode_embedding(events[0]["embedding"]), vector)
    assert embedding_dim(events[0]) == 3


def test_timestamp_without_offset_is_utc_and_offsets_are_converted() -> None:
    naive, offset = INFERENCES.from_python([
        inference_event(timestamp="2026-11-22T10:00:00"),
        inference_event(timestamp="2026-11-22T11:00:00+01:00"),
    ])
    assert naive["timestamp"] == offset["timestamp"]
    assert naive["timestamp"].utcoffset().total_seconds() == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prediction": {"scores": {}}}, "prediction.scores"),
        ({"prediction": {"scores": {"x": -0.1}}}, "prediction.scores"),
        ({"embedding": []}, "embedding"),
        ({"embedding": ["a", "b"]}, "embedding"),
        ({"embedding": base64.b64encode(np.array([np.nan], "<f4").tobytes()).decode()},
         "embedding"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"model": "bad model name"}, "model"),
        ({"patient": {"sex": "X"}}, "patient.sex"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_each_problem_names_index_and_field(change: dict, field: str) -> None:
    with pytest.raises(BatchValidationError) as caught:
        INFERENCES.from_python([inference_event(), inference_event(**change)])
    assert caught.value.problems[0]["index"] == 1
    assert caught.value.problems[0]["field"].startswith(field)


def test_study_uid_required() -> None:
    event = inference_event()
    del event["study_uid"]
    with pytest.raises(BatchValidationError, match="study_uid is required"):
        INFERENCES.from_python([event])


def test_batch_must_be_a_non_empty_list() -> None:
    with pytest.raises(BatchValidationError, match="JSON list"):
        OVERRIDES.from_python({"event_id": "x"})
    with pytest.raises(BatchValidationError, match="empty"):
        OVERRIDES.from_python([])
    assert OVERRIDES.from_python([override_event("1.2.3")])[0].finding == "pneumothorax"


def test_scanner_extra_keys_become_tags() -> None:
    scanner = {**inference_event()["scanner"], "detector_id": "D-17"}
    (event,) = INFERENCES.from_python([inference_event(scanner=scanner)])
    assert event["scanner"]["detector_id"] == "D-17"


def _b64(values: list[float]) -> str:
    return base64.b64encode(np.array(values, "<f4").tobytes()).decode()


@pytest.mark.parametrize(
    "embedding",
    [[], "", "not base64!", base64.b64encode(b"123").decode(), [1.0, "a"], [True], [[1.0]], 5,
     [0.5, 1e39], _b64([0.5, float("nan")]), _b64([float("inf")])],
)
def test_json_bodies_and_python_lists_reject_the_same_embeddings(embedding: object) -> None:
    batch = [inference_event(), inference_event(embedding=embedding)]
    for parse in (lambda: INFERENCES.from_python(batch),
                  lambda: INFERENCES.from_json(json.dumps(batch).encode())):
        with pytest.raises(BatchValidationError) as caught:
            parse()
        assert [(p["index"], p["field"].split(".")[0]) for p in caught.value.problems] == [
            (1, "embedding")]


def test_json_bodies_store_the_same_bytes_as_python_lists() -> None:
    vector = [0.5, -1.25, 3.0]
    batch = [inference_event(embedding=vector), inference_event(embedding=_b64(vector))]
    from_json = INFERENCES.from_json(json.dumps(batch).encode())
    from_python = INFERENCES.from_python(batch)
    assert {e["embedding"] for e in from_json + from_python} == {
        np.array(vector, "<f4").tobytes()}
    assert from_json == from_python


@pytest.mark.parametrize(("body", "message"), [
    (b"[", "malformed JSON"), (b'{"event_id": "x"}', "JSON list"), (b"[]", "empty"),
])
def test_json_body_problems_name_the_body(body: bytes, message: str) -> None:
    with pytest.raises(BatchValidationError, match=message) as caught:
        INFERENCES.from_json(body)
    assert caught.value.problems[0]["field"] == "body"


# --- the input contract ------------------------------------------------------------------------

def _problems_of(batch: list[dict], **bounds: object) -> list[dict]:
    """The problems both parsers find in a batch, checked to be the same."""
    found = []
    for parse in (lambda: INFERENCES.from_python(batch, **bounds),
                  lambda: INFERENCES.from_json(json.dumps(batch).encode(), **bounds)):
        with pytest.raises(BatchValidationError) as caught:
            parse()
        found.append(caught.value.problems)
    assert found[0] == found[1]
    return found[0]


def _scanner(**changes: object) -> dict:
    return {**inference_event()["scanner"], **changes}


@pytest.mark.parametrize(("change", "field"), [
    ({"event_id": "a\x00b"}, "event_id"),
    ({"event_id": "a\u200bb"}, "event_id"),  # zero-width space
    ({"event_id": "a\u202eb"}, "event_id"),  # right-to-left override
    ({"event_id": "x" * 129}, "event_id"),
    ({"study_uid": "1.2.3\x1b[31m"}, "study_uid"),
    ({"study_uid": "1." + "2" * 63}, "study_uid"),  # DICOM UI: 64 characters
    ({"patient": {"id": "MRN\x85"}}, "patient.id"),  # a C1 control
    ({"patient": {"id": "M" * 65}}, "patient.id"),  # DICOM LO: 64 characters
    ({"scanner": _scanner(site="north\x00")}, "scanner.site"),
    ({"scanner": _scanner(station="S" * 17)}, "scanner.station"),  # SH: 16
    ({"scanner": _scanner(modality="D" * 17)}, "scanner.modality"),  # CS: 16
    ({"scanner": _scanner(manufacturer="G" * 65)}, "scanner.manufacturer"),  # LO: 64
    ({"scanner": _scanner(software_version="v" * 65)}, "scanner.software_version"),
    ({"scanner": _scanner(software_version=["1.0", "v" * 65])}, "scanner.software_version"),
    ({"scanner": _scanner(kvp=True)}, "scanner.kvp"),
    ({"scanner": _scanner(kvp="110")}, "scanner.kvp"),
    ({"scanner": _scanner(detector="x" * 5_000)}, "scanner"),  # tags: 4 KiB in all
    ({"scanner": _scanner(**{"bad key": 1})}, "scanner.bad key"),
    ({"scanner": _scanner(**{"k" * 65: 1})}, "scanner.k"),
    ({"scanner": _scanner(detector="D\x00")}, "scanner.detector"),
    ({"scanner": _scanner(detector={"nested": ["a\x07"]})}, "scanner.detector"),
    ({"prediction": {"scores": {"p" * 65: 0.5}}}, "prediction.scores.p"),
    ({"prediction": {"scores": {"pneumothorax": True}}}, "prediction.scores.pneumothorax"),
    ({"prediction": {"scores": {"pneumothorax": 0.5}, "threshold": "0.5"}},
     "prediction.threshold"),
    ({"latency_ms": True}, "latency_ms"),
    ({"patient": {"age_years": False}}, "patient.age_years"),
    ({"timestamp": 1_700_000_000}, "timestamp"),
    ({"timestamp": "1700000000"}, "timestamp"),
    ({"timestamp": "0001-01-01T00:00:00+14:00"}, "timestamp"),
    ({"timestamp": "9999-12-31T23:59:59-14:00"}, "timestamp"),
    ({"timestamp": "9999-01-01T00:00:00Z"}, "timestamp"),
    ({"timestamp": "1989-12-31T23:59:59Z"}, "timestamp"),
])
def test_inference_contract_violations_name_the_field(change: dict, field: str) -> None:
    problems = _problems_of([inference_event(), inference_event(**change)])
    assert [p["index"] for p in problems] == [1]
    assert problems[0]["field"].startswith(field)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e309"])
def test_non_finite_numbers_in_extra_scanner_keys_are_rejected(value: str) -> None:
    body = json.dumps([inference_event(scanner=_scanner(noise=0.5))]).encode()
    with pytest.raises(BatchValidationError) as caught:
        INFERENCES.from_json(body.replace(b'"noise": 0.5', b'"noise": ' + value.encode()))
    assert caught.value.problems == [{"index": 0, "field": "scanner.noise",
                                      "message": "must be a finite number"}]
    with pytest.raises(BatchValidationError, match="finite"):
        INFERENCES.from_python([inference_event(scanner=_scanner(noise=float(value)))])


@pytest.mark.parametrize(("body", "index", "field"), [
    (b'[{"event_id": "a", "event_id": "b"}]', 0, "event_id"),
    (b'[{"event_id": "a"}, {"scanner": {"site": "x", "site": "y"}}]', 1, "scanner.site"),
    (b'[{"prediction": {"scores": {"p": 0.1, "p": 0.9}}}]', 0, "prediction.scores.p"),
    (b'[{"dicom": {"00100020": {"vr": "LO", "Value": ["a"], "Value": ["b"]}}}]', 0,
     "dicom.00100020.Value"),
])
def test_duplicate_keys_at_any_depth_are_rejected_by_name(body: bytes, index: int, field: str
                                                          ) -> None:
    with pytest.raises(BatchValidationError) as caught:
        INFERENCES.from_json(body)
    (problem,) = caught.value.problems
    assert (problem["index"], problem["field"]) == (index, field)
    assert "duplicate key" in problem["message"]


def test_a_long_duplicate_key_is_named_clipped() -> None:
    key = "k" * 10_000
    with pytest.raises(BatchValidationError) as caught:
        INFERENCES.from_json(f'[{{"{key}": 1, "{key}": 2}}]'.encode())
    assert len(json.dumps(caught.value.problems)) < 300


def test_identifiers_refuse_invisible_characters_but_text_keeps_them() -> None:
    """Direction marks may be part of a site's name; in an identifier they make two IDs look
    the same."""
    (event,) = INFERENCES.from_python([inference_event(scanner=_scanner(site="\u202enorth"))])
    assert event["scanner"]["site"] == "\u202enorth"
    problems = _problems_of([inference_event(patient={"id": "MRN\u2066001"})])
    assert problems[0]["field"] == "patient.id"


def test_software_versions_as_a_list_or_backslash_separated_values() -> None:
    values = ["v" * 64, "w" * 64, "x" * 64]
    as_list, as_text = INFERENCES.from_python([
        inference_event(scanner=_scanner(software_version=values)),
        inference_event(scanner=_scanner(software_version="\\".join(values))),
    ])
    assert as_list["scanner"]["software_version"] == "/".join(values)
    assert as_text["scanner"]["software_version"] == "\\".join(values)


def test_extra_scanner_keys_within_the_contract_are_kept() -> None:
    tags = {"detector_id": "D-17", "gain": 1.5, "flags": [1, None, True], "more": {"a": "b"}}
    (event,) = INFERENCES.from_python([inference_event(scanner=_scanner(**tags))])
    assert {key: event["scanner"][key] for key in tags} == tags


def test_no_input_is_echoed_beyond_64_characters() -> None:
    patient_id, score_name = "P" * 300, "s" * 1_000_000
    batch = [inference_event(patient={"id": patient_id}),
             inference_event(prediction={"scores": {score_name: 0.5}}),
             inference_event(**{"u" * 100_000: 1})]
    problems = _problems_of(batch)
    assert len(problems) == 3
    shown = json.dumps(problems)
    assert "P" * 65 not in shown and "s" * 65 not in shown and "u" * 65 not in shown


def test_timestamp_bounds_follow_the_settings(tmp_path) -> None:
    from monitor.config import Settings

    settings = Settings(timestamp_earliest=datetime(1900, 1, 1),  # naive: read as UTC
                        timestamp_max_future_s=10 * 365 * 86_400,
                        secret_key_file=tmp_path / "key")
    bounds = TimestampBounds.from_settings(settings)
    old, ahead = (inference_event(timestamp="1950-01-01T00:00:00Z"),
                  inference_event(timestamp=(datetime.now(UTC) + timedelta(days=365)).isoformat()))
    assert len(INFERENCES.from_python([old, ahead], bounds)) == 2
    problems = _problems_of([old, ahead])  # the defaults: 1990 and one day ahead
    assert [(p["index"], p["field"]) for p in problems] == [(0, "timestamp"), (1, "timestamp")]
    assert "MONITOR_TIMESTAMP_EARLIEST" in problems[0]["message"]
    assert "MONITOR_TIMESTAMP_MAX_FUTURE_S" in problems[1]["message"]
    in_a_day = inference_event(timestamp=(datetime.now(UTC) + timedelta(hours=23)).isoformat())
    assert INFERENCES.from_python([in_a_day])


def test_python_callers_may_give_datetimes() -> None:
    moment = datetime(2026, 11, 22, 11, 0, tzinfo=timezone(timedelta(hours=1)))
    (event,) = INFERENCES.from_python([inference_event(timestamp=moment)])
    assert event["timestamp"] == moment and event["timestamp"].tzinfo is UTC


@pytest.mark.parametrize(("change", "field"), [
    ({"event_id": "r\x00"}, "event_id"),
    ({"finding": "pneumo\x00thorax"}, "finding"),
    ({"reader": "r\u202e17"}, "reader"),
    ({"reader": "r" * 129}, "reader"),
    ({"study_uid": "1" * 65}, "study_uid"),
    ({"timestamp": 1_700_000_000}, "timestamp"),
    ({"timestamp": "0001-01-01T00:00:00+14:00"}, "timestamp"),
    ({"timestamp": "9999-12-31T23:59:59-14:00"}, "timestamp"),
    ({"timestamp": "9999-01-01T00:00:00Z"}, "timestamp"),
    ({"radiologist_positive": "maybe"}, "radiologist_positive"),
])
def test_override_contract_violations_name_the_field(change: dict, field: str) -> None:
    batch = [override_event("1.2.3"), {**override_event("1.2.4"), **change}]
    for parse in (lambda: OVERRIDES.from_python(batch),
                  lambda: OVERRIDES.from_json(json.dumps(batch).encode())):
        with pytest.raises(BatchValidationError) as caught:
            parse()
        assert [(p["index"], p["field"]) for p in caught.value.problems] == [(1, field)]


def test_a_dicom_header_is_held_to_the_same_contract() -> None:
    header = {"00100020": {"vr": "LO", "Value": ["P" * 300]},
              "00081010": {"vr": "SH", "Value": ["STATION-NAME-TOO-LONG"]}}
    problems = _problems_of([inference_event(dicom=header, scanner=None, patient=None)])
    assert {p["field"] for p in problems} == {"scanner.station", "patient.id"}
    assert all("DICOM header" in p["message"] for p in problems)
    assert "P" * 65 not in json.dumps(problems)
