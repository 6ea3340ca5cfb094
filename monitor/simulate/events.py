"""Identifiers and event dicts in the JSON contract (see DESIGN.md, "Events")."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import numpy as np
from monitor_client.codec import encode_embedding

UID_ROOT = "1.2.826.0.1.3680043.8.498."
EmbeddingFormat = Literal["base64", "list"]


def event_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` random (version 4) UUIDs drawn from ``rng``, so a seed fixes them."""
    words = rng.integers(0, 2**64, size=(n, 2), dtype=np.uint64).tolist()
    return [str(uuid.UUID(int=(hi << 64) | lo, version=4)) for hi, lo in words]


def study_uids(rng: np.random.Generator, n: int) -> list[str]:
    """DICOM UIDs under a registered root: 26 + 30 digits, well under the 64-character cap."""
    head = rng.integers(10**11, 10**12, size=n).tolist()
    tail = rng.integers(0, 10**18, size=n).tolist()
    return [f"{UID_ROOT}{a}{b:018d}" for a, b in zip(head, tail, strict=True)]


def patient_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Distinct ``MRN`` + 7 digits."""
    numbers = rng.choice(9_000_000, size=n, replace=False) + 1_000_000
    return [f"MRN{x:07d}" for x in numbers.tolist()]


def iso_timestamps(start: datetime, seconds: np.ndarray) -> list[str]:
    """``2026-10-01T06:12:09Z`` strings for whole seconds after ``start`` (UTC)."""
    base = np.datetime64(start.replace(tzinfo=None), "s")
    stamps = base + np.asarray(seconds, dtype=np.int64).astype("timedelta64[s]")
    return [f"{s}Z" for s in np.datetime_as_string(stamps, unit="s").tolist()]


def inference_events(
    *,
    model: str,
    event_id: list[str],
    model_version: list[str],
    timestamp: list[str],
    study_uid: list[str],
    scanners: list[dict[str, Any]],
    patient_id: list[str],
    sex: list[str],
    age_years: list[int],
    pneumothorax_score: list[float],
    effusion_score: list[float],
    positive: list[bool],
    threshold: float,
    embeddings: np.ndarray,
    embedding_format: EmbeddingFormat,
    latency_ms: list[float],
) -> list[dict[str, Any]]:
    events = []
    for i in range(len(event_id)):
        row = embeddings[i]
        events.append({
            "event_id": event_id[i],
            "model": model,
            "model_version": model_version[i],
            "timestamp": timestamp[i],
            "study_uid": study_uid[i],
            "scanner": scanners[i],
            "patient": {"id": patient_id[i], "sex": sex[i], "age_years": age_years[i]},
            "prediction": {
                "scores": {"pneumothorax": pneumothorax_score[i], "effusion": effusion_score[i]},
                "positive": positive[i],
                "threshold": threshold,
            },
            "embedding": encode_embedding(row) if embedding_format == "base64" else row.tolist(),
            "latency_ms": latency_ms[i],
        })
    return events


def override_events(
    *,
    model: str,
    finding: str,
    event_id: list[str],
    study_uid: list[str],
    timestamp: list[str],
    radiologist_positive: list[bool],
    agrees_with_model: list[bool],
    reader: list[str],
) -> list[dict[str, Any]]:
    return [
        {
            "event_id": event_id[i],
            "model": model,
            "study_uid": study_uid[i],
            "timestamp": timestamp[i],
            "radiologist_positive": radiologist_positive[i],
            "finding": finding,
            "agrees_with_model": agrees_with_model[i],
            "reader": reader[i],
        }
        for i in range(len(event_id))
    ]
