"""The write path: rows built outside the write transaction, then inserted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from monitor.collect.ingest import (
    insert_inferences,
    prepare_inferences,
    store_inferences,
    store_overrides,
)
from monitor.collect.inprocess import InProcessCollector
from monitor.commands.demo import accepting, load_deployment
from monitor.errors import BatchValidationError
from monitor.runtime import Runtime
from monitor.schema import INFERENCES, OVERRIDES
from monitor.simulate import simulate_deployment
from monitor.store.db import session_scope
from monitor.store.models import Inference, ModelVersion, Override
from tests.factories import inference_event, override_event


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


def test_event_ids_are_unique_per_model(runtime: Runtime) -> None:
    """Another model's event with the same id is its own event; a repeat within one model is
    still a duplicate, in one batch or across batches."""
    first = inference_event(event_id="shared-id")
    other_model = inference_event(event_id="shared-id", model="fracture-detect")
    result = store_inferences(runtime, INFERENCES.from_python([first, other_model, first]))
    assert (result.accepted, result.new, result.duplicates) == (2, 2, 1)
    retry = store_inferences(runtime, INFERENCES.from_python([other_model]))
    assert (retry.new, retry.duplicates) == (0, 1)
    read = override_event(first["study_uid"], event_id="shared-read")
    reads = [read, {**read, "model": "fracture-detect"}]
    assert store_overrides(runtime, OVERRIDES.from_python(reads)).new == 2
    assert store_overrides(runtime, OVERRIDES.from_python(reads)).duplicates == 2
    with session_scope(runtime.sessions) as session:
        stored = session.execute(select(Inference.model, Inference.event_id)).all()
        stored_reads = session.execute(select(Override.model, Override.event_id)).all()
    assert sorted(stored) == [("cxr-triage", "shared-id"), ("fracture-detect", "shared-id")]
    assert sorted(stored_reads) == [("cxr-triage", "shared-read"),
                                    ("fracture-detect", "shared-read")]


def test_the_demo_widens_the_timestamp_range_to_hold_its_simulated_dates(
        sqlite_runtime: Runtime) -> None:
    """Simulated dates may lie ahead of the clock: with the default range the in-process
    collector refuses them; the demo's settings take them all."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=40)
    deployment = simulate_deployment(seed=3, n_studies=300, days=8, start=start, episodes=())
    with pytest.raises(BatchValidationError, match="MONITOR_TIMESTAMP_MAX_FUTURE_S"):
        InProcessCollector(sqlite_runtime).log_inferences(deployment.inferences[-5:])
    sqlite_runtime.settings = accepting(sqlite_runtime.settings, deployment)
    assert load_deployment(sqlite_runtime, deployment) == (
        len(deployment.inferences) + len(deployment.overrides))
