"""Read queries. Functions take a Session and return dataclasses or DataFrames, never rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
from monitor_client.events import as_utc
from sqlalchemy import Select, SQLColumnExpression, case, func, select
from sqlalchemy.orm import Session

from monitor.errors import NotFoundError, clip
from monitor.store.db import IN_CHUNK, SelectT
from monitor.store.models import Inference, ModelAlias, ModelVersion, Override

# Columns of a window frame: what the detectors and the dashboard read per study.
WINDOW_COLUMNS = (
    "id", "event_id", "ts", "study_key", "patient_key", "sex", "age_years", "age_band",
    "manufacturer", "vendor", "scanner_model", "station", "site", "modality", "body_part",
    "view", "kvp", "exposure_mas", "pixel_spacing_mm", "photometric", "software_version",
    "score", "positive", "threshold", "latency_ms",
)


@dataclass(frozen=True)
class ModelVersionInfo:
    id: int
    model: str
    version: str
    status: str
    embedding_dim: int | None
    notes: str | None
    created_at: datetime
    updated_at: datetime
    aliases: tuple[str, ...] = ()

    @classmethod
    def of(cls, row: ModelVersion, aliases: tuple[str, ...] = ()) -> ModelVersionInfo:
        return cls(row.id, row.model, row.version, row.status, row.embedding_dim, row.notes,
                   row.created_at, row.updated_at, aliases)


def list_model_versions(session: Session, model: str | None = None) -> list[ModelVersionInfo]:
    query = select(ModelVersion).order_by(ModelVersion.model, ModelVersion.created_at)
    if model is not None:
        query = query.where(ModelVersion.model == model)
    aliases: dict[int, list[str]] = {}
    for alias in session.scalars(select(ModelAlias)):
        aliases.setdefault(alias.model_version_id, []).append(alias.alias)
    return [ModelVersionInfo.of(row, tuple(sorted(aliases.get(row.id, []))))
            for row in session.scalars(query)]


def get_model_version(session: Session, model: str, version: str) -> ModelVersionInfo:
    row = session.scalar(
        select(ModelVersion).where(ModelVersion.model == model, ModelVersion.version == version)
    )
    if row is None:
        raise NotFoundError(f"model {clip(model)!r} version {clip(version)!r} not found")
    aliases = tuple(session.scalars(
        select(ModelAlias.alias).where(ModelAlias.model_version_id == row.id)
    ))
    return ModelVersionInfo.of(row, aliases)


def _window(query: SelectT, version_id: int | None, model: str | None,
            start: datetime | None, end: datetime | None) -> SelectT:
    if version_id is not None:
        query = query.where(Inference.model_version_id == version_id)
    if model is not None:
        query = query.where(Inference.model == model)
    if start is not None:
        query = query.where(Inference.ts >= start)
    if end is not None:
        query = query.where(Inference.ts < end)
    return query


def window_frame(
    session: Session,
    version_id: int,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    last: int | None = None,
    with_embeddings: bool = False,
    with_reads: bool = True,
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The studies of one model version in [start, end) (or its ``last`` N), one row each,
    with the latest radiologist read joined by (model, study): columns ``WINDOW_COLUMNS`` plus
    ``radiologist_positive``, ``agrees_with_model``, ``read_ts``. Embeddings, when asked for,
    come back as an (n, d) float32 array in the frame's row order (``load_embeddings``)."""
    columns = [getattr(Inference, name) for name in WINDOW_COLUMNS]
    query = _window(select(*columns), version_id, None, start, end)
    if last is not None:
        query = query.order_by(Inference.ts.desc(), Inference.id.desc()).limit(last)
    frame = pd.DataFrame(session.execute(query).all(), columns=list(WINDOW_COLUMNS))
    frame = frame.sort_values(["ts", "id"], kind="stable").reset_index(drop=True)
    if with_reads:
        frame = join_reads(session, frame, version_id)
    embeddings = None
    if with_embeddings and len(frame):
        embeddings = load_embeddings(session, frame["id"].astype(int).tolist())
    return frame, embeddings


READ_COLUMNS = ("radiologist_positive", "agrees_with_model", "read_ts")


def join_reads(session: Session, frame: pd.DataFrame, version_id: int) -> pd.DataFrame:
    """The frame with each study's latest radiologist read (``READ_COLUMNS``), looked up by
    (model, study key) on the override index, so the cost follows the window's size."""
    frame = frame.drop(columns=[c for c in READ_COLUMNS if c in frame.columns])
    model = session.scalar(select(ModelVersion.model).where(ModelVersion.id == version_id))
    keys = frame["study_key"].dropna().unique().tolist()
    rows: list[Any] = []
    for lo in range(0, len(keys), IN_CHUNK):
        rows += session.execute(
            select(Override.study_key, Override.radiologist_positive,
                   Override.agrees_with_model, Override.ts)
            .where(Override.model == model, Override.study_key.in_(keys[lo : lo + IN_CHUNK]))
        ).all()
    if not rows:
        for name in READ_COLUMNS:
            frame[name] = pd.Series([None] * len(frame), dtype=object, index=frame.index)
        return frame
    reads = pd.DataFrame(rows, columns=["study_key", *READ_COLUMNS])
    latest = reads.sort_values("read_ts", kind="stable").drop_duplicates("study_key", keep="last")
    merged = frame.merge(latest, on="study_key", how="left")
    for name in ("radiologist_positive", "agrees_with_model"):
        merged[name] = merged[name].astype(object).where(merged[name].notna(), None)
    return merged


def load_embeddings(session: Session, inference_ids: list[int]) -> np.ndarray | None:
    """float32 (n, d) in the order of ``inference_ids``, a row of NaN for a study logged
    without an embedding; None when none of them has one."""
    blobs: dict[int, bytes | None] = {}
    for lo in range(0, len(inference_ids), IN_CHUNK):
        chunk = inference_ids[lo : lo + IN_CHUNK]
        blobs.update(session.execute(
            select(Inference.id, Inference.embedding).where(Inference.id.in_(chunk))
        ).all())
    present = [blobs.get(i) for i in inference_ids]
    first = next((blob for blob in present if blob is not None), None)
    if first is None:
        return None
    dim = len(first) // 4
    out = np.full((len(inference_ids), dim), np.nan, dtype=np.float32)
    rows = [k for k, blob in enumerate(present) if blob is not None and len(blob) == 4 * dim]
    if rows:
        out[rows] = np.frombuffer(b"".join(present[k] or b"" for k in rows),
                                  dtype="<f4").reshape(len(rows), dim)
    return out


SummaryBy = Literal["day", "site", "scanner", "version"]


def summary(
    session: Session,
    model: str,
    *,
    version: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    by: SummaryBy = "day",
) -> list[dict[str, Any]]:
    """Counts of studies, positives and radiologist reads (and overrides: reads that disagree
    with the model) per day, site, scanner or version."""
    version_id = get_model_version(session, model, version).id if version else None
    key: SQLColumnExpression[Any] = {
        "day": func.date(Inference.ts),
        "site": Inference.site,
        "scanner": Inference.scanner_model,
        "version": Inference.model_version_id,
    }[by]
    studies: Select[Any, int, Any] = _window(
        select(key.label("key"), func.count().label("studies"),
               func.sum(case((Inference.positive.is_(True), 1), else_=0)).label("positives"))
        .group_by(key),
        version_id, model, start, end,
    )
    reads: Select[Any, int, int] = _window(
        select(key.label("key"), func.count(func.distinct(Override.study_key)).label("reads"),
               func.count(func.distinct(Override.study_key)).filter(
                   Override.agrees_with_model.is_(False)).label("overrides"))
        .join(Override, (Override.model == Inference.model)
              & (Override.study_key == Inference.study_key))
        .group_by(key),
        version_id, model, start, end,
    )
    read_counts = {row.key: row for row in session.execute(reads)}
    names = {}
    if by == "version":
        names = dict(session.execute(select(ModelVersion.id, ModelVersion.version)).all())
    out = []
    for row in session.execute(studies):
        read = read_counts.get(row.key)
        out.append({
            by: names.get(row.key, str(row.key)) if by == "version" else str(row.key),
            "studies": int(row.studies),
            "positives": int(row.positives or 0),
            "reads": int(read.reads) if read else 0,
            "overrides": int(read.overrides) if read else 0,
        })
    return sorted(out, key=lambda item: item[by])


def list_inferences(
    session: Session,
    model: str,
    *,
    version: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
    include_embedding: bool = False,
) -> list[dict[str, Any]]:
    """Stored inference events (pseudonymised keys only), newest first."""
    version_id = get_model_version(session, model, version).id if version else None
    columns = [getattr(Inference, name) for name in WINDOW_COLUMNS if name != "id"]
    columns += [Inference.scores, Inference.model_version_id]
    if include_embedding:
        columns.append(Inference.embedding)
    query = _window(select(*columns), version_id, model, start, end)
    query = query.order_by(Inference.ts.desc(), Inference.id.desc()).limit(limit).offset(offset)
    versions = dict(session.execute(select(ModelVersion.id, ModelVersion.version)).all())
    out = []
    for row in session.execute(query):
        item = dict(row._mapping)
        item["model"] = model
        item["model_version"] = versions[item.pop("model_version_id")]
        if include_embedding and item["embedding"] is not None:
            item["embedding"] = np.frombuffer(item["embedding"], dtype="<f4").tolist()
        out.append(item)
    return out


def list_overrides(
    session: Session,
    model: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    query = select(Override.event_id, Override.model, Override.model_version, Override.study_key,
                   Override.ts, Override.radiologist_positive, Override.finding,
                   Override.agrees_with_model, Override.reader_key).where(Override.model == model)
    if start is not None:
        query = query.where(Override.ts >= start)
    if end is not None:
        query = query.where(Override.ts < end)
    query = query.order_by(Override.ts.desc(), Override.id.desc()).limit(limit).offset(offset)
    return [dict(row._mapping) for row in session.execute(query)]


def count_rows(session: Session) -> dict[str, int]:
    return {
        "inferences": session.scalar(select(func.count()).select_from(Inference)) or 0,
        "overrides": session.scalar(select(func.count()).select_from(Override)) or 0,
        "model_versions": session.scalar(select(func.count()).select_from(ModelVersion)) or 0,
    }


def newest_timestamp(session: Session, version_id: int) -> datetime | None:
    """The version's newest inference timestamp (UTC), None without inferences."""
    newest = session.scalar(
        select(func.max(Inference.ts)).where(Inference.model_version_id == version_id)
    )
    return None if newest is None else as_utc(newest)
