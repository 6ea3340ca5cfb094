"""Baselines: stratified, capped reference samples of one model version; the newest is used."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, update

from monitor.checks import CheckOptions, run_check
from monitor.checks.baselines import (
    create_baseline,
    load_reference,
    require_baseline,
    resolve_version,
    stratified_sample,
)
from monitor.collect.inprocess import InProcessCollector
from monitor.errors import InsufficientDataError, NotFoundError, ValidationError
from monitor.runtime import Runtime
from monitor.store import repo, results
from monitor.store.db import session_scope
from monitor.store.models import AuditEntry, ModelAlias, ModelVersion
from monitor.store.registry import monitored_versions
from tests.factories import inference_event, override_event
from tests.simdb import MODEL, PREVIOUS, PRODUCTION, SimulatedTemplate

pytest_plugins = ["tests.simdb"]


def strata_frame(sizes: dict[tuple[str, str], int]) -> pd.DataFrame:
    rows = [(site, scanner) for (site, scanner), n in sizes.items() for _ in range(n)]
    return pd.DataFrame(rows, columns=["site", "scanner_model"])


def test_stratified_sample_is_proportional_capped_and_keeps_every_stratum() -> None:
    sizes = {("north", "A"): 5_000, ("north", "B"): 3_000, ("south", "C"): 1_990,
             ("east", "D"): 9, ("east", "E"): 1}
    frame = strata_frame(sizes)
    picked = stratified_sample(frame, max_studies=1_000, rng=np.random.default_rng(1))
    assert picked.size == 1_000 and np.unique(picked).size == 1_000
    counts = frame.iloc[picked].groupby(["site", "scanner_model"]).size().to_dict()
    assert set(counts) == set(sizes)  # the 1-study stratum is kept
    for key, n in sizes.items():
        assert abs(counts[key] - 1_000 * n / len(frame)) <= 1.0, key
    again = stratified_sample(frame, max_studies=1_000, rng=np.random.default_rng(1))
    assert np.array_equal(picked, again)
    other = stratified_sample(frame, max_studies=1_000, rng=np.random.default_rng(2))
    assert not np.array_equal(picked, other)
    small = stratified_sample(frame.iloc[:50], max_studies=1_000, rng=np.random.default_rng(0))
    assert np.array_equal(small, np.arange(50))


def test_stratified_sample_with_more_strata_than_places() -> None:
    frame = strata_frame({("s", str(i)): 3 for i in range(20)})
    picked = stratified_sample(frame, max_studies=10, rng=np.random.default_rng(0))
    assert picked.size == 10


def test_baseline_from_a_time_range(simulated_runtime: Runtime,
                                    simulated_template: SimulatedTemplate) -> None:
    start, end = simulated_template.day(0), simulated_template.day(7)
    info = create_baseline(simulated_runtime, model=MODEL, version=PRODUCTION, start=start,
                           end=end, max_studies=300, created_by="alice")
    assert info.n_studies == 300 and info.version == PRODUCTION
    assert info.window_start == start and info.window_end == end
    summary = info.summary or {}
    sampling = summary["sampling"]
    assert sampling["sampled"] == 300 and sampling["population"] > 300
    assert sum(sampling["per_stratum"].values()) == 300
    assert abs(sum(summary["categories"]["site"].values()) - 1.0) < 1e-9
    assert 0.0 < summary["positive_rate"] < 1.0
    assert summary["performance"]["n_reads"] > 0
    assert summary["numeric"]["kvp"]["p50"] > 50
    with session_scope(simulated_runtime.sessions) as session:
        reference = load_reference(session, results.get_baseline(session, info.id))
        audit = session.scalars(select(AuditEntry).where(
            AuditEntry.action == "baseline_created", AuditEntry.actor == "alice")).all()
    assert len(reference.frame) == 300 and reference.embeddings is not None
    assert reference.embeddings.shape == (300, 64)
    assert reference.frame["ts"].min() >= pd.Timestamp(start)
    assert reference.frame["ts"].max() < pd.Timestamp(end)
    assert reference.frame["radiologist_positive"].notna().sum() > 0
    assert len(audit) == 1 and audit[0].details["baseline_id"] == info.id


def test_baseline_from_the_last_studies_and_the_newest_is_used(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    info = create_baseline(simulated_runtime, model=MODEL, version=PREVIOUS, last=250)
    assert info.n_studies == 250
    with session_scope(simulated_runtime.sessions) as session:
        version = repo.get_model_version(session, MODEL, PREVIOUS)
        newest = max(repo.window_frame(session, version.id, with_reads=False)[0]["ts"])
        assert require_baseline(session, version).id == info.id
        listed = results.list_baselines(session, model=MODEL, version=PREVIOUS)
    assert [b.id for b in listed] == [info.id, simulated_template.baseline_ids[PREVIOUS]]
    assert info.window_end is not None and info.window_end > newest
    outcome = run_check(simulated_runtime, model=MODEL, version=PREVIOUS, window="1d",
                        now=simulated_template.day(9), options=CheckOptions(report=False))
    assert outcome.baseline_id == info.id


def test_bad_baseline_requests_say_what_is_wrong(
    simulated_runtime: Runtime, simulated_template: SimulatedTemplate
) -> None:
    with pytest.raises(ValidationError, match="not both"):
        create_baseline(simulated_runtime, model=MODEL, version=PRODUCTION, last=100,
                        start=simulated_template.day(0), end=simulated_template.day(1))
    with pytest.raises(ValidationError):
        create_baseline(simulated_runtime, model=MODEL, version=PRODUCTION)
    with pytest.raises(InsufficientDataError, match="has 0 studies"):
        create_baseline(simulated_runtime, model=MODEL, version=PRODUCTION,
                        start=simulated_template.day(-9), end=simulated_template.day(-8))
    with pytest.raises(NotFoundError, match=r"'9\.9\.9'"):
        create_baseline(simulated_runtime, model=MODEL, version="9.9.9", last=100)


def test_version_resolution(simulated_runtime: Runtime) -> None:
    with session_scope(simulated_runtime.sessions) as session:
        assert resolve_version(session, MODEL).version == PRODUCTION
        assert {v.version for v in monitored_versions(session)} == {PRODUCTION, PREVIOUS}
        session.execute(ModelAlias.__table__.delete())
        session.execute(update(ModelVersion).where(ModelVersion.version == PRODUCTION)
                        .values(status="retired"))
    with session_scope(simulated_runtime.sessions) as session:
        assert resolve_version(session, MODEL).version == PREVIOUS  # the newest active one
        session.execute(update(ModelVersion).values(status="candidate"))
    with session_scope(simulated_runtime.sessions) as session:
        assert monitored_versions(session) == []
        with pytest.raises(NotFoundError, match="--version"):
            resolve_version(session, MODEL)
        with pytest.raises(NotFoundError, match="nobody"):
            resolve_version(session, "nobody")


def test_baselines_on_each_database(runtime: Runtime) -> None:
    """Create and read back a baseline on SQLite and PostgreSQL, reads joined."""
    base = datetime(2026, 11, 1, tzinfo=UTC)
    rng = np.random.default_rng(0)
    events = [inference_event(timestamp=(base + timedelta(minutes=i)).isoformat(),
                              embedding=rng.standard_normal(8).astype(float).tolist())
              for i in range(60)]
    collector = InProcessCollector(runtime)
    collector.log_inferences(events)
    collector.log_overrides([override_event(e["study_uid"]) for e in events[:20]])
    info = create_baseline(runtime, model="cxr-triage", version="1.4.0", last=50,
                           max_studies=40)
    assert info.n_studies == 40
    with session_scope(runtime.sessions) as session:
        reference = load_reference(session, results.get_baseline(session, info.id))
        assert results.newest_baseline(session, info.model_version_id) == info
    assert len(reference.frame) == 40
    assert reference.embeddings is not None and reference.embeddings.shape == (40, 8)
    read = reference.frame["radiologist_positive"].notna().to_numpy()
    assert set(reference.frame.loc[read, "event_id"]) <= {e["event_id"] for e in events[:20]}
    assert info.summary is not None and info.summary["sampling"]["population"] == 50


def test_a_rebaselined_stratum_is_sampled_at_the_baselines_rate(runtime: Runtime) -> None:
    """A baseline capped at half of its studies: the stratum's new studies come in at the
    same rate, the rest of its members stay as they were, and the next re-baseline reads the
    same rate."""
    from monitor.checks.baselines import rebaseline_stratum
    from tests.alerting.support import NORTH, SOUTH, T0, UPDATED, add_studies

    add_studies(runtime, NORTH, range(0, 20), 8)
    add_studies(runtime, SOUTH, range(0, 10), 6)
    add_studies(runtime, UPDATED, range(10, 20), 6)
    capped = create_baseline(runtime, model="cxr-triage", version="1.4.0", start=T0,
                             end=T0 + timedelta(days=7), max_studies=49, created_by="setup")
    assert capped.summary is not None
    assert (capped.summary["sampling"]["population"], capped.n_studies) == (98, 49)
    with session_scope(runtime.sessions) as session:
        old = load_reference(session, capped, with_embeddings=False).frame
        new, previous = rebaseline_stratum(
            session, model="cxr-triage", version="1.4.0", field="station", value="XR-SOUTH-1",
            since=T0 + timedelta(days=10), actor="alice", reason="validated")
        members = load_reference(session, new, with_embeddings=False).frame
    assert previous.id == capped.id
    north = set(old.loc[old["station"] == "XR-NORTH-1", "id"])
    assert set(members.loc[members["station"] == "XR-NORTH-1", "id"]) == north
    south = members[members["station"] == "XR-SOUTH-1"]
    assert len(south) == 21  # half of the 42 studies of days 10-16
    assert set(south["software_version"]) == {"VF12B"}
    assert new.summary is not None
    assert new.summary["sampling"]["sampled"] / new.summary["sampling"]["population"] == \
        pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValidationError, match="field 'colour'"), \
            session_scope(runtime.sessions) as session:
        rebaseline_stratum(session, model="cxr-triage", version="1.4.0", field="colour",
                           value="red", since=T0, actor="alice", reason="r")
