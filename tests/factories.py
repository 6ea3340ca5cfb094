"""Small valid events for tests."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from monitor_client.codec import encode_embedding


def inference_event(**overrides: Any) -> dict[str, Any]:
    rng = np.random.default_rng(abs(hash(overrides.get("event_id", ""))) % 2**32)
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "model": "cxr-triage",
        "model_version": "1.4.0",
        "timestamp": "2026-11-22T10:00:00Z",
        "study_uid": f"1.2.840.113619.{uuid.uuid4().int % 10**12}",
        "scanner": {"manufacturer": "GE Healthcare", "model": "Optima XR240amx",
                    "station": "XR-NORTH-1", "site": "north", "modality": "DX",
                    "body_part": "CHEST", "view": "PA", "kvp": 110.0, "exposure_mas": 2.5,
                    "pixel_spacing_mm": 0.139, "photometric": "MONOCHROME2",
                    "software_version": "DM_Platform 5.2"},
        "patient": {"id": "MRN0012345", "sex": "F", "age_years": 54},
        "prediction": {"scores": {"pneumothorax": 0.91, "effusion": 0.12},
                       "positive": True, "threshold": 0.5},
        "embedding": encode_embedding(rng.standard_normal(16).astype(np.float32)),
        "latency_ms": 84.0,
    }
    event.update(overrides)
    return event


def override_event(study_uid: str, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "model": "cxr-triage",
        "study_uid": study_uid,
        "timestamp": "2026-11-22T10:20:00Z",
        "radiologist_positive": False,
        "finding": "pneumothorax",
        "agrees_with_model": False,
        "reader": "r17",
    }
    event.update(overrides)
    return event
