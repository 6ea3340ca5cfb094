"""The event contract: inference and override events as clients send them.

A timestamp without a UTC offset is read as UTC. Embeddings arrive as a JSON list of floats or
as base64 of little-endian float32; both become ``bytes`` (float32, little-endian) here.
"""

from __future__ import annotations

import binascii
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
import pybase64
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError

from monitor.errors import BatchValidationError
from monitor.errors import ValidationError as MonitorValidationError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MAX_EMBEDDING_DIM = 65_536


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _embedding_size_problem(nbytes: int) -> str | None:
    if nbytes % 4:
        return f"base64 decodes to {nbytes} bytes, not a whole number of float32"
    if nbytes == 0:
        return "is empty"
    if nbytes > 4 * MAX_EMBEDDING_DIM:
        return f"has {nbytes // 4} values, more than {MAX_EMBEDDING_DIM}"
    return None


def _first_non_finite(vector: np.ndarray) -> int | None:
    # a float64 sum of float32 values cannot overflow: it is finite exactly when all are
    if math.isfinite(vector.sum(dtype=np.float64)):
        return None
    return int(np.flatnonzero(~np.isfinite(vector))[0])


def _float32_bytes(values: list[Any] | tuple[Any, ...]) -> bytes:
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: rejected as such
        array = np.asarray(values, dtype="<f4")
    if array.ndim != 1:
        raise ValueError("must be a flat list of numbers")
    return array.tobytes()


def _decode_embedding(value: Any) -> bytes | None:
    """Float list or base64 float32 (little-endian) -> float32 little-endian bytes."""
    if value is None:
        return None
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = pybase64.b64decode(value, validate=True)  # SIMD: ~10x the standard library
        except (binascii.Error, ValueError) as exc:
            raise ValueError("is not valid base64") from exc
    elif isinstance(value, list | tuple):
        if any(isinstance(v, bool | str) for v in value):
            raise ValueError("must be a flat list of numbers")
        try:
            raw = _float32_bytes(value)
        except (TypeError, ValueError) as exc:
            raise ValueError("must be a flat list of numbers") from exc
    else:
        raise ValueError("must be a list of floats or a base64 string of float32")
    problem = _embedding_size_problem(len(raw))
    if problem is not None:
        raise ValueError(problem)
    bad = _first_non_finite(np.frombuffer(raw, dtype="<f4"))
    if bad is not None:
        raise ValueError(f"value {bad} is not finite")
    return raw


Embedding = Annotated[bytes | None, BeforeValidator(_decode_embedding)]


class Scanner(BaseModel):
    """Acquisition metadata. Unknown keys are kept as tags."""

    model_config = ConfigDict(extra="allow")

    manufacturer: str | None = Field(default=None, max_length=128)
    model: str | None = Field(default=None, max_length=128)
    station: str | None = Field(default=None, max_length=128)
    site: str | None = Field(default=None, max_length=64)
    modality: str | None = Field(default=None, max_length=16)
    body_part: str | None = Field(default=None, max_length=64)
    view: str | None = Field(default=None, max_length=32)
    kvp: float | None = Field(default=None, ge=0, le=1_000)
    exposure_mas: float | None = Field(default=None, ge=0, le=100_000)
    pixel_spacing_mm: float | None = Field(default=None, gt=0, le=100)
    photometric: str | None = Field(default=None, max_length=32)
    software_version: str | None = Field(default=None, max_length=512)
    vendor: str | None = Field(default=None, max_length=64)

    @property
    def tags(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Patient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=256)
    sex: Literal["F", "M", "O", "U"] | None = None
    age_years: float | None = Field(default=None, ge=0, le=130)


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scores: dict[str, float] = Field(min_length=1, max_length=256)
    positive: bool | None = None
    threshold: float | None = Field(default=None, ge=0, le=1)

    @field_validator("scores")
    @classmethod
    def _scores_are_probabilities(cls, scores: dict[str, float]) -> dict[str, float]:
        for name, score in scores.items():
            if not math.isfinite(score) or not 0.0 <= score <= 1.0:
                raise ValueError(f"score {name!r} = {score} is not a finite number in [0, 1]")
        return scores


class InferenceEvent(BaseModel):
    """One study read by the model."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=128)
    model: str = Field(pattern=NAME_PATTERN)
    model_version: str = Field(pattern=NAME_PATTERN)
    timestamp: datetime
    study_uid: str | None = Field(default=None, min_length=1, max_length=256)
    scanner: Scanner | None = None
    dicom: dict[str, Any] | None = None  # DICOM JSON header; scanner/patient are taken from it
    patient: Patient | None = None
    prediction: Prediction
    embedding: Embedding = None
    latency_ms: float | None = Field(default=None, ge=0, le=3_600_000)

    _utc = field_validator("timestamp")(classmethod(lambda cls, v: _as_utc(v)))

    @model_validator(mode="after")
    def _from_dicom(self) -> InferenceEvent:
        """Fill scanner, patient and study_uid from a DICOM header; explicit fields win."""
        if self.dicom is not None:
            from monitor.collect.dicom import event_parts_from_dicom

            try:
                parts = event_parts_from_dicom(self.dicom)
            except MonitorValidationError as exc:  # becomes this item's 422 problem
                raise ValueError(f"dicom: {exc}") from None
            scanner = {**parts["scanner"], **(self.scanner.model_dump(exclude_none=True)
                                              if self.scanner else {})}
            patient = {**parts["patient"], **(self.patient.model_dump(exclude_none=True)
                                              if self.patient else {})}
            self.scanner = Scanner.model_validate({k: v for k, v in scanner.items()
                                                   if v is not None})
            self.patient = Patient.model_validate({k: v for k, v in patient.items()
                                                   if k in Patient.model_fields})
            self.study_uid = self.study_uid or parts.get("study_uid")
            self.dicom = None  # the header itself is never stored
        if self.study_uid is None:
            raise ValueError("study_uid is required (directly or from the DICOM header)")
        return self

    @property
    def embedding_dim(self) -> int | None:
        return None if self.embedding is None else len(self.embedding) // 4


class OverrideEvent(BaseModel):
    """One radiologist read of a study the model read (the partial, delayed label)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=128)
    model: str = Field(pattern=NAME_PATTERN)
    model_version: str | None = Field(default=None, pattern=NAME_PATTERN)
    study_uid: str = Field(min_length=1, max_length=256)
    timestamp: datetime
    radiologist_positive: bool
    finding: str | None = Field(default=None, max_length=128)
    agrees_with_model: bool | None = None
    reader: str | None = Field(default=None, max_length=256)

    _utc = field_validator("timestamp")(classmethod(lambda cls, v: _as_utc(v)))


class _InferenceEventFromJSON(InferenceEvent):
    """An inference event read straight from a JSON body (the HTTP API). Pydantic decodes
    base64 embeddings inside its own JSON parser (``val_json_bytes``), so a batch's embeddings
    never become Python strings: this halves the cost of validating a 512-d batch."""

    model_config = ConfigDict(extra="forbid", val_json_bytes="base64")

    # checked batch-wise by ``_embedding_problems``: one numpy pass instead of one per event
    embedding: bytes | list[Annotated[float, Field(strict=True, allow_inf_nan=False)]] | None = (
        None  # type: ignore[assignment]
    )


def _embedding_problems(events: list[InferenceEvent]) -> list[dict[str, Any]]:
    """The embedding checks of ``_decode_embedding`` for a batch read from JSON: lists become
    float32 bytes, sizes are checked, and finiteness in one pass over the whole batch."""
    problems = []
    checked: list[tuple[int, bytes]] = []
    for index, event in enumerate(events):
        raw = event.embedding
        if raw is None:
            continue
        if isinstance(raw, list):
            raw = event.embedding = _float32_bytes(raw)
        problem = _embedding_size_problem(len(raw))
        if problem is None:
            checked.append((index, raw))
        else:
            problems.append({"index": index, "field": "embedding", "message": problem})
    joined = np.frombuffer(b"".join(raw for _, raw in checked), dtype="<f4")
    if _first_non_finite(joined) is not None:  # rare: find the items
        for index, raw in checked:
            bad = _first_non_finite(np.frombuffer(raw, dtype="<f4"))
            if bad is not None:
                problems.append({"index": index, "field": "embedding",
                                 "message": f"value {bad} is not finite"})
    return problems


INFERENCE_BATCH = TypeAdapter(list[InferenceEvent])
OVERRIDE_BATCH = TypeAdapter(list[OverrideEvent])
INFERENCE_JSON_BATCH = TypeAdapter(list[_InferenceEventFromJSON])


def decode_embedding(value: bytes | str) -> np.ndarray:
    """Stored bytes, or the contract's base64 string -> float32 vector."""
    if isinstance(value, str):
        try:
            value = pybase64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MonitorValidationError(f"embedding is not valid base64: {exc}",
                                         field="embedding") from None
    if len(value) % 4:
        raise MonitorValidationError(
            f"embedding has {len(value)} bytes, not a whole number of float32 values",
            field="embedding",
        )
    return np.frombuffer(value, dtype="<f4").astype(np.float32)


def encode_embedding(embedding: Any) -> str:
    """A vector (numpy array, list, torch tensor on any device) -> the contract's compact form:
    base64 of little-endian float32 bytes."""
    if hasattr(embedding, "detach"):  # a torch tensor, possibly on a GPU
        embedding = embedding.detach().cpu().numpy()
    values = np.asarray(embedding)
    if values.ndim != 1:
        raise MonitorValidationError(
            f"embedding must be one-dimensional, got shape {values.shape}", field="embedding"
        )
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise MonitorValidationError(
            f"embedding must hold real numbers, got dtype {values.dtype}", field="embedding"
        )
    return pybase64.b64encode(values.astype("<f4", copy=False).tobytes()).decode("ascii")


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


# How pydantic names the members of the embedding union in an error's location.
_EMBEDDING_MEMBERS = ("bytes", "list[float]")
_NOT_THIS_MEMBER = ("bytes_type", "list_type")  # the input is the other member's JSON type


def _problems(exc: PydanticValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors as the API's problems: item index, dotted field path, message. Of the
    embedding union's two members, only the one matching the input's JSON type speaks."""
    problems: list[dict[str, Any]] = []
    embedding_errors: dict[Any, list[tuple[str, dict[str, Any]]]] = {}
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        if error["type"] == "json_invalid":
            return [{"index": None, "field": "body",
                     "message": f"malformed JSON: {error['msg'].removeprefix('Invalid JSON: ')}"}]
        if not loc and error["type"] == "list_type":
            return [{"index": None, "field": "body", "message": "must be a JSON list of events"}]
        index = loc[0] if loc and isinstance(loc[0], int) else None
        field = _field_path(tuple(part for part in loc[1:] if part not in _EMBEDDING_MEMBERS))
        problem = {"index": index, "field": field,
                   "message": error["msg"].removeprefix("Value error, ")}
        if field.split(".", 1)[0] == "embedding":
            embedding_errors.setdefault(index, []).append((error["type"], problem))
        else:
            problems.append(problem)
    for index, found in embedding_errors.items():
        relevant = [problem for kind, problem in found if kind not in _NOT_THIS_MEMBER]
        problems.extend(relevant or [{"index": index, "field": "embedding", "message":
                                      "must be a list of floats or a base64 string of float32"}])
    return problems


def parse_batch(adapter: TypeAdapter[list[Any]], data: Any) -> list[Any]:
    """Validate a whole batch; any bad item rejects it with every problem named by index and
    field (``BatchValidationError``). An empty batch is itself an error."""
    if not isinstance(data, list):
        raise BatchValidationError(
            [{"index": None, "field": "body", "message": "must be a JSON list of events"}]
        )
    if not data:
        raise BatchValidationError([{"index": None, "field": "body", "message": "batch is empty"}])
    try:
        return adapter.validate_python(data)
    except PydanticValidationError as exc:
        raise BatchValidationError(_problems(exc)) from None


def parse_json_batch(adapter: TypeAdapter[list[Any]], body: bytes) -> list[Any]:
    """``parse_batch`` for a JSON body, parsed and validated in one pass by pydantic (use
    ``INFERENCE_JSON_BATCH`` for inferences). NaN and Infinity are read, then rejected by
    validation with their field named."""
    try:
        batch = adapter.validate_json(body)
    except PydanticValidationError as exc:
        raise BatchValidationError(_problems(exc)) from None
    if not batch:
        raise BatchValidationError([{"index": None, "field": "body", "message": "batch is empty"}])
    if adapter is INFERENCE_JSON_BATCH and (problems := _embedding_problems(batch)):
        raise BatchValidationError(problems)
    return batch
