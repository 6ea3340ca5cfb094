"""The write path: rows built outside the write transaction, then inserted."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from monitor.collect.ingest import insert_inferences, prepare_inferences, store_inferences
from monitor.errors import BatchValidationError
from monitor.runtime import Runtime
from monitor.schema import INFERENCES
from monitor.store.db import session_scope
from monitor.store.models import Inference, ModelVersion
from tests.factories import inference_event


def _stored(runtime: Runtime) -> int:
    with session_scope(runtime.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(Inference)) or 0)


def test_a_length_registered_meanwhile_rejects_the_later_batch(runtime: Runtime) -> None:
    """Two batches prepared against a version with no registered length: the first to insert
    registers its length, the second is rejected whole."""
    first = INFERENCES.from_python([inference_event(embedding=[0.5] * 4)])
    second = INFERENCES.from_python([inference_event(embedding=None),
                                     inference_event(embedding=[0.5] * 8)])
    with session_scope(runtime.sessions) as session:
        prepared_first = prepare_inferences(session, first, runtime.pseudonymiser)
        prepared_second = prepare_inferences(session, second, runtime.pseudonymiser)
    with runtime.batch_session() as session:
        assert insert_inferences(session, prepared_first).new == 1
    with pytest.raises(BatchValidationError) as caught, runtime.batch_session() as session:
        insert_inferences(session, prepared_second)
    assert caught.value.problems[0]["index"] == 1
    assert "registered meanwhile" in caught.value.problems[0]["message"]
    assert _stored(runtime) == 1
    with session_scope(runtime.sessions) as session:
        assert session.scalar(select(ModelVersion.embedding_dim)) == 4


def test_store_counts_repeats_and_stored_events_as_duplicates(runtime: Runtime) -> None:
    events = [inference_event() for _ in range(3)]
    batch = INFERENCES.from_python([*events, events[0]])
    first = store_inferences(runtime, batch)
    assert (first.accepted, first.new, first.duplicates) == (3, 3, 1)
    retry = store_inferences(runtime, batch)
    assert (retry.accepted, retry.new, retry.duplicates) == (3, 0, 4)
    assert _stored(runtime) == 3
