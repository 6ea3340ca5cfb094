from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from monitor.errors import BatchValidationError
from monitor.schema import INFERENCES, OVERRIDES, decode_embedding, embedding_dim, encode_embedding
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
