"""The event contract: inference and override events as clients send them.

A timestamp without a UTC offset is read as UTC. Embeddings arrive as a JSON list of floats or
as base64 of little-endian float32; both become ``bytes`` (float32, little-endian) here.

``INFERENCES`` and ``OVERRIDES`` parse whole batches, from Python objects or straight from the
JSON bytes of a request. Inference events are validated into plain dicts (``TypedDict``) rather
than model objects: a batch of 1,000 is the ingestion hot path, and dicts validate in about
60% of the time. From JSON, pydantic decodes base64 embeddings inside its own parser
(``val_json_bytes``), so they never become Python strings.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NotRequired

import numpy as np
import pybase64
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, with_config
from pydantic import ValidationError as PydanticValidationError
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from monitor.errors import BatchValidationError
from monitor.errors import ValidationError as MonitorValidationError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
MAX_EMBEDDING_DIM = 65_536

Problem = dict[str, Any]  # {"index": item or None, "field": dotted path, "message": text}


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@with_config(ConfigDict(extra="allow"))
class Scanner(TypedDict, total=False):
    """Acquisition metadata. Keys beyond these are kept, and stored as the row's tags."""

    manufacturer: Annotated[str | None, Field(max_length=128)]
    model: Annotated[str | None, Field(max_length=128)]
    station: Annotated[str | None, Field(max_length=128)]
    site: Annotated[str | None, Field(max_length=64)]
    modality: Annotated[str | None, Field(max_length=16)]
    body_part: Annotated[str | None, Field(max_length=64)]
    view: Annotated[str | None, Field(max_length=32)]
    kvp: Annotated[float | None, Field(ge=0, le=1_000)]
    exposure_mas: Annotated[float | None, Field(ge=0, le=100_000)]
    pixel_spacing_mm: Annotated[float | None, Field(gt=0, le=100)]
    photometric: Annotated[str | None, Field(max_length=32)]
    software_version: Annotated[str | None, Field(max_length=512)]
    vendor: Annotated[str | None, Field(max_length=64)]


SCANNER_FIELDS = frozenset(Scanner.__annotations__)


@with_config(ConfigDict(extra="forbid"))
class Patient(TypedDict, total=False):
    id: Annotated[str | None, Field(max_length=256)]
    sex: Literal["F", "M", "O", "U"] | None
    age_years: Annotated[float | None, Field(ge=0, le=130)]


Score = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


@with_config(ConfigDict(extra="forbid"))
class Prediction(TypedDict):
    scores: Annotated[dict[str, Score], Field(min_length=1, max_length=256)]
    positive: NotRequired[bool | None]
    threshold: NotRequired[Annotated[float | None, Field(ge=0, le=1)]]


@with_config(ConfigDict(extra="forbid", val_json_bytes="base64"))
class InferenceEvent(TypedDict):
    """One study read by the model. Once parsed: ``timestamp`` is UTC, ``study_uid`` is set,
    ``embedding`` (if any) is float32 bytes, and a DICOM header has been folded into
    ``scanner`` and ``patient`` and dropped."""

    event_id: Annotated[str, Field(min_length=1, max_length=128)]
    model: Annotated[str, Field(pattern=NAME_PATTERN)]
    model_version: Annotated[str, Field(pattern=NAME_PATTERN)]
    timestamp: datetime
    study_uid: NotRequired[Annotated[str | None, Field(min_length=1, max_length=256)]]
    scanner: NotRequired[Scanner | None]
    dicom: NotRequired[dict[str, Any] | None]  # DICOM JSON header; scanner/patient come from it
    patient: NotRequired[Patient | None]
    prediction: Prediction
    embedding: NotRequired[
        bytes | list[Annotated[float, Field(strict=True, allow_inf_nan=False)]] | None]
    latency_ms: NotRequired[Annotated[float | None, Field(ge=0, le=3_600_000)]]


def embedding_dim(event: InferenceEvent) -> int | None:
    raw = event.get("embedding")
    return None if raw is None else len(raw) // 4


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


# --- embeddings ------------------------------------------------------------------------------

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


def _float32_bytes(values: list[Any]) -> bytes:
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: rejected as such
        array = np.asarray(values, dtype="<f4")
    if array.ndim != 1:
        raise ValueError("must be a flat list of numbers")
    return array.tobytes()


def _decode_base64_embeddings(data: list[Any]) -> tuple[list[Any], list[Problem]]:
    """Python input only: base64 strings -> bytes before validation (from JSON, pydantic's
    parser does this). Items with a string embedding are copied, never changed in place."""
    decoded, problems = [], []
    for index, item in enumerate(data):
        value = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(value, str):
            try:
                item = {**item, "embedding": pybase64.b64decode(value, validate=True)}
            except (binascii.Error, ValueError):
                problems.append({"index": index, "field": "embedding",
                                 "message": "is not valid base64"})
                item = {**item, "embedding": None}
        decoded.append(item)
    return decoded, problems


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


# --- batches -------------------------------------------------------------------------------

_SCANNER = TypeAdapter(Scanner)
_PATIENT = TypeAdapter(Patient)


def _fold_in_dicom(event: InferenceEvent) -> None:
    """Fill scanner, patient and study_uid from the event's DICOM header; explicit fields win.
    The header itself is never kept."""
    from monitor.collect.dicom import event_parts_from_dicom

    parts = event_parts_from_dicom(event.pop("dicom"))  # type: ignore[misc]
    explicit_scanner = {k: v for k, v in (event.get("scanner") or {}).items() if v is not None}
    explicit_patient = {k: v for k, v in (event.get("patient") or {}).items() if v is not None}
    scanner = {**parts["scanner"], **explicit_scanner}
    patient = {**parts["patient"], **explicit_patient}
    event["scanner"] = _SCANNER.validate_python({k: v for k, v in scanner.items()
                                                 if v is not None})
    event["patient"] = _PATIENT.validate_python({k: v for k, v in patient.items()
                                                 if k in Patient.__annotations__})
    event["study_uid"] = event.get("study_uid") or parts.get("study_uid")


def _finish_inferences(events: list[InferenceEvent]) -> list[Problem]:
    """What validation leaves to one pass over the batch: UTC timestamps, the DICOM header,
    the required study UID, embeddings as float32 bytes with their sizes checked, and
    finiteness checked for the whole batch at once."""
    problems: list[Problem] = []
    embeddings: list[tuple[int, bytes]] = []
    for index, event in enumerate(events):
        event["timestamp"] = _as_utc(event["timestamp"])
        if event.get("dicom") is not None:
            try:
                _fold_in_dicom(event)
            except (MonitorValidationError, PydanticValidationError) as exc:
                problems.append({"index": index, "field": "dicom", "message": f"dicom: {exc}"})
                continue
        event.pop("dicom", None)
        if not event.get("study_uid"):
            problems.append({"index": index, "field": "study_uid", "message":
                             "study_uid is required (directly or from the DICOM header)"})
        raw = event.get("embedding")
        if raw is None:
            continue
        if isinstance(raw, list):
            raw = event["embedding"] = _float32_bytes(raw)
        size_problem = _embedding_size_problem(len(raw))
        if size_problem is None:
            embeddings.append((index, raw))
        else:
            problems.append({"index": index, "field": "embedding", "message": size_problem})
    joined = np.frombuffer(b"".join(raw for _, raw in embeddings), dtype="<f4")
    if _first_non_finite(joined) is not None:  # rare: find the items
        for index, raw in embeddings:
            bad = _first_non_finite(np.frombuffer(raw, dtype="<f4"))
            if bad is not None:
                problems.append({"index": index, "field": "embedding",
                                 "message": f"value {bad} is not finite"})
    return problems


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


# How pydantic names the members of the embedding union in an error's location.
_EMBEDDING_MEMBERS = ("bytes", "list[float]")
_NOT_THIS_MEMBER = ("bytes_type", "list_type")  # the input is the other member's JSON type


def _problems(exc: PydanticValidationError) -> list[Problem]:
    """Pydantic's errors as the API's problems: item index, dotted field path, message. Of the
    embedding union's two members, only the one matching the input's JSON type speaks."""
    problems: list[Problem] = []
    embedding_errors: dict[Any, list[tuple[str, Problem]]] = {}
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


def _body_problem(message: str) -> BatchValidationError:
    return BatchValidationError([{"index": None, "field": "body", "message": message}])


@dataclass(frozen=True)
class BatchParser:
    """Parses a whole batch of one kind of event. Any bad item rejects the batch with every
    problem named by item index and field (``BatchValidationError``); so does an empty batch.
    ``finish`` does the checks that need the validated batch."""

    adapter: TypeAdapter[list[Any]]
    finish: Callable[[list[Any]], list[Problem]] | None = None
    prepare: Callable[[list[Any]], tuple[list[Any], list[Problem]]] | None = None

    def from_python(self, data: Any) -> list[Any]:
        if not isinstance(data, list):
            raise _body_problem("must be a JSON list of events")
        problems: list[Problem] = []
        if self.prepare is not None:
            data, problems = self.prepare(data)
        try:
            batch = self.adapter.validate_python(data)
        except PydanticValidationError as exc:
            raise BatchValidationError(problems + _problems(exc)) from None
        return self._finished(batch, problems)

    def from_json(self, body: bytes | bytearray) -> list[Any]:
        """Parsed and validated in one pass by pydantic. NaN and Infinity are read, then
        rejected by validation with their field named."""
        try:
            batch = self.adapter.validate_json(body)
        except PydanticValidationError as exc:
            raise BatchValidationError(_problems(exc)) from None
        return self._finished(batch, [])

    def _finished(self, batch: list[Any], problems: list[Problem]) -> list[Any]:
        if not batch:
            raise _body_problem("batch is empty")
        if self.finish is not None:
            problems = problems + self.finish(batch)
        if problems:
            raise BatchValidationError(problems)
        return batch


INFERENCES = BatchParser(TypeAdapter(list[InferenceEvent]), _finish_inferences,
                         _decode_base64_embeddings)
OVERRIDES = BatchParser(TypeAdapter(list[OverrideEvent]))
