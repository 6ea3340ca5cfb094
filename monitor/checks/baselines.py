"""Baselines: the reference sample of a model version that every check compares a window to.

A baseline keeps

* its members (``baseline_member`` rows): a sample of the version's studies in a time range
  (``start``/``end``) or its newest N (``last``), stratified by site and scanner model
  (proportional allocation, largest remainders, every stratum present keeps at least one
  study) and capped at ``Settings.baseline_max_studies``;
* ``summary`` (JSON): what the dashboards, reports and reviewers read: the sampling, the
  category shares and numeric quantiles of the metadata, the score quantiles, the positive
  rate and the performance against radiologist reads with Wilson intervals.

Detectors are refitted from the members at check time and ``fitted_state`` stays empty:
every fit here is cheap next to its test (the embedding tests keep the reference sample and
fit their PCA on the pooled sample at test time by design, the metadata tests keep value
counts, the novelty score indexes at most a few thousand reference studies), and refitting
means a change to a detector's defaults applies to old baselines too.

The newest baseline of a version is the one checks use.

A validated change (an operator accepts an incident whose cause is a stratum: a station,
scanner model, software version, site or vendor) re-baselines that stratum:
``rebaseline_stratum`` makes a new baseline of the version whose members are the old
baseline's members outside the stratum plus the stratum's studies from the chosen day over
the old baseline's span, sampled at the old baseline's rate. Being the newest, it is the one
checks use from then on, and the sequential history restarts on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from monitor_client.events import as_utc
from sqlalchemy.orm import Session

from monitor.checks.windows import default_now
from monitor.detect.performance import performance_summary
from monitor.errors import InsufficientDataError, NotFoundError, ValidationError, clip
from monitor.runtime import Runtime
from monitor.store import repo, results
from monitor.store.audit import SYSTEM_ACTOR, record_audit
from monitor.store.db import session_scope
from monitor.store.registry import active_version
from monitor.store.repo import join_reads, load_embeddings
from monitor.store.results import BaselineInfo

STRATA = ("site", "scanner_model")
CATEGORICAL_FIELDS = ("vendor", "manufacturer", "scanner_model", "station", "site", "view",
                      "photometric", "software_version", "sex", "age_band")
NUMERIC_FIELDS = ("kvp", "exposure_mas", "pixel_spacing_mm", "age_years")
MIN_BASELINE_STUDIES = 30
# A re-baselined stratum needs at least this share of the studies the old baseline held from
# it, and a stratum the old baseline did not hold (a new scanner) MIN_BASELINE_STUDIES.
STRATUM_COVERAGE = 0.8


@dataclass(frozen=True)
class Reference:
    """A baseline's member studies as the checks read them (``embeddings`` row-aligned with
    ``frame``, NaN rows for studies logged without one)."""

    baseline: BaselineInfo
    frame: pd.DataFrame
    embeddings: np.ndarray | None


def resolve_version(session: Session, model: str, version: str | None = None
                    ) -> repo.ModelVersionInfo:
    """``version`` when given; else the version the ``production`` alias points at; else the
    newest version with status ``active``."""
    if version is not None:
        return repo.get_model_version(session, model, version)
    versions = repo.list_model_versions(session, model)
    if not versions:
        raise NotFoundError(f"model {clip(model)!r} not found (no version has logged inferences)")
    active = active_version(session, model)
    for info in versions:
        if info.version == active:
            return info
    raise NotFoundError(
        f"model {clip(model)!r} has no production alias and no active version: name one with "
        f"--version (known: {', '.join(v.version for v in versions)})"
    )


def stratified_sample(
    frame: pd.DataFrame, *, max_studies: int, rng: np.random.Generator,
    strata: tuple[str, ...] = STRATA,
) -> np.ndarray:
    """Row positions of a sample of at most ``max_studies``, allocated to the strata in
    proportion to their size (largest remainders; each stratum keeps at least one study),
    drawn without replacement within each stratum; sorted."""
    n = len(frame)
    if n <= max_studies:
        return np.arange(n)
    keys = frame[list(strata)].astype(object).where(frame[list(strata)].notna(), "(missing)")
    labels = keys.astype(str).agg("\x1f".join, axis=1).to_numpy()
    names, codes = np.unique(labels, return_inverse=True)
    sizes = np.bincount(codes, minlength=names.size)
    quota = sizes * max_studies / n
    allocation = np.maximum(np.floor(quota).astype(int), 1)
    allocation = np.minimum(allocation, sizes)
    remainder = quota - np.floor(quota)
    for index in np.argsort(-remainder, kind="stable"):
        if allocation.sum() >= max_studies:
            break
        if allocation[index] < sizes[index]:
            allocation[index] += 1
    while allocation.sum() > max_studies:  # the at-least-one rule overshot: trim the largest
        allocation[int(np.argmax(allocation))] -= 1
    chosen = [rng.choice(np.flatnonzero(codes == k), size=int(allocation[k]), replace=False)
              for k in range(names.size) if allocation[k] > 0]
    return np.sort(np.concatenate(chosen))


def _quantiles(values: pd.Series) -> dict[str, float] | None:
    numbers = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    if numbers.size == 0:
        return None
    q = np.percentile(numbers, [5, 25, 50, 75, 95])
    return {"mean": float(numbers.mean()), **{f"p{p}": float(v) for p, v in
                                              zip((5, 25, 50, 75, 95), q, strict=True)}}


def reads_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns the performance detectors read, from a window frame."""
    return pd.DataFrame({
        "model_positive": frame["positive"].to_numpy(dtype=object),
        "radiologist_positive": frame["radiologist_positive"].to_numpy(dtype=object),
        "agrees": frame["agrees_with_model"].to_numpy(dtype=object),
    })


def summarise(frame: pd.DataFrame) -> dict[str, Any]:
    """Descriptive state of a baseline sample (see the module docstring)."""
    categories = {}
    for name in CATEGORICAL_FIELDS:
        shares = frame[name].dropna().astype(str).value_counts(normalize=True)
        categories[name] = {str(k): float(v) for k, v in shares.items()}
    known = frame["positive"].dropna()
    usable = frame[frame["positive"].notna()]
    return {
        "categories": categories,
        "numeric": {name: _quantiles(frame[name]) for name in NUMERIC_FIELDS},
        "score": _quantiles(frame["score"]),
        "positive_rate": float(known.astype(bool).mean()) if len(known) else None,
        "performance": performance_summary(reads_frame(usable)) if len(usable) else None,
        "n_patients": int(frame["patient_key"].nunique()),
    }


def create_baseline(
    runtime: Runtime,
    *,
    model: str,
    version: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    last: int | None = None,
    max_studies: int | None = None,
    created_by: str | None = None,
    seed: int = 0,
) -> BaselineInfo:
    """Create a baseline for a model version from its studies in [start, end) or its newest
    ``last`` studies; returns it. The newest baseline of a version is the one checks use."""
    if (last is None) == (start is None and end is None):
        raise ValidationError("give either a time range (start and end) or last=N, not both",
                              field="last" if last is not None else "start")
    if last is not None and last < 1:
        raise ValidationError(f"last has value {last}; must be >= 1", field="last")
    cap = max_studies if max_studies is not None else runtime.settings.baseline_max_studies
    if cap < 1:
        raise ValidationError(f"max_studies has value {cap}; must be >= 1", field="max_studies")
    with session_scope(runtime.sessions) as session:
        info = resolve_version(session, model, version)
        if last is not None:
            frame, _ = repo.window_frame(session, info.id, end=default_now(session, info.id),
                                  last=last)
        else:
            lo = as_utc(start) if start is not None else None
            hi = as_utc(end) if end is not None else None
            if lo is not None and hi is not None and hi <= lo:
                raise ValidationError(f"end {hi.isoformat()} is not after start "
                                      f"{lo.isoformat()}", field="end")
            frame, _ = repo.window_frame(session, info.id, start=lo, end=hi)
        where = (f"its newest {last} studies" if last is not None
                 else f"[{start.isoformat() if start else '-'}, {end.isoformat() if end else '-'})")
        if len(frame) < MIN_BASELINE_STUDIES:
            raise InsufficientDataError(
                f"{model} {info.version} has {len(frame)} studies in {where}; a baseline needs "
                f"at least {MIN_BASELINE_STUDIES}"
            )
        sample = frame.iloc[stratified_sample(frame, max_studies=cap,
                                              rng=np.random.default_rng(seed))]
        first = as_utc(pd.Timestamp(frame["ts"].min()).to_pydatetime())
        newest = as_utc(pd.Timestamp(frame["ts"].max()).to_pydatetime())
        window_start = as_utc(start) if start is not None else first
        window_end = as_utc(end) if end is not None else newest + pd.Timedelta(microseconds=1)
        summary = {
            "source": {"last": last} if last is not None else {
                "start": window_start.isoformat(), "end": window_end.isoformat()},
            "sampling": {
                "strata": list(STRATA), "population": len(frame), "sampled": len(sample),
                "max_studies": cap, "seed": seed, "allocation": "proportional",
                "per_stratum": {
                    f"{site} / {scanner}": int(count) for (site, scanner), count in
                    sample.groupby(list(STRATA), dropna=False).size().items()
                },
            },
            "fitted_state": "none: detectors refit from the members at check time",
            **summarise(sample),
        }
        baseline_id = results.insert_baseline(
            session, model_version_id=info.id, created_at=datetime.now(UTC),
            created_by=created_by, window_start=window_start, window_end=window_end,
            summary=summary, member_ids=sample["id"].astype(int).tolist(),
        )
        # What "normal" means for a version is a decision: who took it goes in the audit log.
        record_audit(session, actor=created_by or SYSTEM_ACTOR, action="baseline_created",
                     model=info.model, model_version=info.version,
                     details={"baseline_id": baseline_id, "n_studies": len(sample),
                              "population": len(frame), **summary["source"]})
        return results.get_baseline(session, baseline_id)


def require_baseline(session: Session, info: repo.ModelVersionInfo) -> BaselineInfo:
    """The version's newest baseline, or an error naming the command that creates one."""
    baseline = results.newest_baseline(session, info.id)
    if baseline is None:
        raise NotFoundError(
            f"{info.model} {info.version} has no baseline: create one with `monitor baseline "
            f"create --model {info.model} --version {info.version} --last 5000` (or --from/--to) "
            "or POST /v1/baselines"
        )
    return baseline


def load_reference(session: Session, baseline: BaselineInfo, *, with_embeddings: bool = True
                   ) -> Reference:
    """The baseline's member studies (window frame rows, reads joined) and embeddings."""
    members = results.baseline_member_ids(session, baseline.id)
    frame, _ = repo.window_frame(session, baseline.model_version_id, start=baseline.window_start,
                                 end=baseline.window_end, with_reads=False)
    frame = frame[frame["id"].isin(members)].reset_index(drop=True)
    frame = join_reads(session, frame, baseline.model_version_id)
    embeddings = None
    if with_embeddings and len(frame):
        embeddings = load_embeddings(session, frame["id"].astype(int).tolist())
    return Reference(baseline, frame, embeddings)


def _in_stratum(values: pd.Series, value: str) -> np.ndarray:
    """Rows whose field holds ``value`` (compared as the attribution does: stripped text)."""
    return np.asarray(values.map(
        lambda v: v is not None and not (isinstance(v, float) and math.isnan(v))
        and str(v).strip() == value).to_numpy(dtype=bool))


def _updated_stations(window: pd.DataFrame, new_in: np.ndarray) -> set[str]:
    """Stations whose studies in the window are mostly of the new software version."""
    stations = window["station"].where(window["station"].notna(), None)
    counts = stations.value_counts()
    updated = stations[new_in].value_counts()
    return {str(s) for s, n in updated.items() if n >= 0.5 * counts.get(s, 0)}


def rebaseline_stratum(
    session: Session,
    *,
    model: str,
    version: str,
    field: str,
    value: str,
    since: datetime,
    actor: str,
    reason: str,
    max_studies: int | None = None,
    seed: int = 0,
    now: datetime | None = None,
) -> tuple[BaselineInfo, BaselineInfo]:
    """A new baseline of the version (in the caller's transaction): the current baseline's
    members outside ``field == value`` plus the stratum's studies in [since, since + the
    current baseline's span), sampled at the fraction the current baseline was sampled at
    (seeded) and capped at ``max_studies`` when given. Returns (new, previous).

    A software version is a change of the devices that run it: for ``software_version`` the
    stratum also covers the stations whose studies from ``since`` are mostly of that version
    (their older studies in the baseline ran the version they replaced, and would otherwise
    stay in it as a category that has disappeared).

    Refused (InsufficientDataError, saying how many there are and how many are needed) when
    the stratum has fewer than ``STRATUM_COVERAGE`` of the studies the previous baseline held
    from it (``MIN_BASELINE_STUDIES`` for a stratum it did not hold)."""
    if field not in CATEGORICAL_FIELDS:
        raise ValidationError(f"field {field!r} is not one of {', '.join(CATEGORICAL_FIELDS)}",
                              field="field")
    now = now or datetime.now(UTC)
    since = as_utc(since)
    info = repo.get_model_version(session, model, version)
    previous = require_baseline(session, info)
    if previous.window_start is None or previous.window_end is None:
        raise ValidationError(f"baseline {previous.id} of {model} {version} has no time span "
                              "to re-baseline over", field="baseline")
    span = previous.window_end - previous.window_start
    until = since + span
    old = load_reference(session, previous, with_embeddings=False).frame
    window, _ = repo.window_frame(session, info.id, start=since, end=until)
    old_in = _in_stratum(old[field], value)
    new_in = _in_stratum(window[field], value)
    stations = _updated_stations(window, new_in) if field == "software_version" else set()
    if stations:  # the devices that moved to the version: their old studies go, all of theirs come
        old_in |= old["station"].isin(stations).to_numpy(dtype=bool)
        new_in |= window["station"].isin(stations).to_numpy(dtype=bool)
    kept = old[~old_in]
    stratum = window[new_in]
    sampling = (previous.summary or {}).get("sampling") or {}
    population, sampled = sampling.get("population"), sampling.get("sampled")
    fraction = (sampled / population if isinstance(population, int) and population > 0
                and isinstance(sampled, int) else 1.0)
    rng = np.random.default_rng(seed)
    if fraction < 1.0 and len(stratum):
        size = max(1, round(fraction * len(stratum)))
        stratum = stratum.iloc[np.sort(rng.choice(len(stratum), size=size, replace=False))]
    held = int(old_in.sum())
    needed = math.ceil(STRATUM_COVERAGE * held) if held else MIN_BASELINE_STUDIES
    where = (f"{field}={clip(value)} of {model} {version} in [{since.isoformat()}, "
             f"{until.isoformat()})")
    if len(stratum) < needed:
        raise InsufficientDataError(
            f"{where} has {len(stratum)} studies"
            + (f" once sampled as baseline {previous.id} was ({fraction:.0%})"
               if fraction < 1.0 else "")
            + f"; re-baselining it needs at least {needed} ("
            + (f"{STRATUM_COVERAGE:.0%} of the {held} baseline {previous.id} held from it"
               if held else f"a stratum baseline {previous.id} did not hold: "
               f"{MIN_BASELINE_STUDIES}")
            + "): accept it later or from an earlier day")
    sample = pd.concat([kept, stratum], ignore_index=True)
    if max_studies is not None and len(sample) > max_studies:
        sample = sample.iloc[stratified_sample(sample, max_studies=max_studies, rng=rng)]
    window_start = min(previous.window_start, since)
    window_end = max(previous.window_end, until)
    source = {"accepted": {"field": field, "value": value, "since": since.isoformat(),
                           "until": until.isoformat(), "previous_baseline_id": previous.id,
                           "replaced": held, "added": len(stratum), "reason": reason}}
    summary = {
        "source": source,
        # population / sampled keeps the previous rate, which the next re-baseline reads
        "sampling": {**sampling, "population": round(len(sample) / fraction),
                     "sampled": len(sample), "seed": seed,
                     "allocation": "the previous baseline's members outside the stratum and "
                                   "the stratum's studies from `since`, at the same rate"},
        "fitted_state": "none: detectors refit from the members at check time",
        **summarise(sample),
    }
    # created after the previous one whatever the clock says: the newest is the one checks use
    created_at = max(now, previous.created_at + timedelta(microseconds=1))
    baseline_id = results.insert_baseline(
        session, model_version_id=info.id, created_at=created_at, created_by=actor,
        window_start=window_start, window_end=window_end, summary=summary,
        member_ids=sample["id"].astype(int).tolist(),
    )
    record_audit(session, actor=actor, action="baseline_created", model=model,
                 model_version=version, reason=reason, now=now,
                 details={"baseline_id": baseline_id, "n_studies": len(sample), **source})
    return results.get_baseline(session, baseline_id), previous
