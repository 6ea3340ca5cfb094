"""The event contract: inference and override events as clients send them, and as the
service validates them (it parses with these very types).

A timestamp is ISO 8601 text (a ``datetime`` from Python); one without a UTC offset is read as
UTC. Embeddings travel as a JSON list of floats or as base64 of little-endian float32
(``monitor_client.codec``). Strings are bounded and free of control characters, identifiers
of invisible ones too; numbers are finite and never booleans; scanner keys beyond the
contract's are kept within ``MAX_TAGS_BYTES``. Inference events are ``TypedDict``s (plain
dicts: a batch of 1,000 validates in about 60% of the time model objects take); overrides are
a pydantic model.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    with_config,
)
from typing_extensions import NotRequired, TypedDict  # pydantic needs this TypedDict < 3.12

MAX_EMBEDDING_DIM = 65_536
MAX_TAGS_BYTES = 4_096  # the scanner's extra keys, as JSON, in all

# --- strings ---------------------------------------------------------------------------------
# No stored string may hold a C0 or C1 control character (NUL included: PostgreSQL text cannot
# hold it) or a line/paragraph separator. Identifiers may not hold invisible characters either:
# zero-width and joiner characters, direction overrides and marks, fillers, the byte order
# mark, so that two IDs that look the same are the same.
CONTROLS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
INVISIBLES = (r"\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
              r"\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8")
TEXT_PATTERN = rf"^[^{CONTROLS}]*$"
ID_PATTERN = rf"^[^{CONTROLS}{INVISIBLES}]+$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # model and version names
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # score names, extra scanner keys
PATTERN_MESSAGES = {
    TEXT_PATTERN: "must not contain control characters",
    ID_PATTERN: "must be non-empty, without control, zero-width or direction characters",
    NAME_PATTERN: "must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter "
                  "or digit",
    KEY_PATTERN: "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
                 "or digit",
}
ID_MAX = 128


# Identifiers: non-empty, without control or invisible characters.
EventId = Annotated[str, Field(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN)]
Identifier = EventId  # a finding's or a reader's name
StudyUid = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN)]  # DICOM UI
PatientId = StudyUid  # DICOM LO: 64 characters too
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
# DICOM value representations: LO (long string) 64 characters, SH (short string) 16, CS (code
# string) 16. Fields derived from a DICOM element are bounded by its VR.
LongString = Annotated[str, Field(max_length=64, pattern=TEXT_PATTERN)]
ShortString = Annotated[str, Field(max_length=16, pattern=TEXT_PATTERN)]
CodeString = ShortString


# A multi-valued LO element (SoftwareVersions): values separated by a backslash (DICOM) or a
# slash (as ``monitor_client.dicom`` joins them), each at most 64 characters; a list of
# strings is joined with '/' before the service validates it.
MAX_SOFTWARE_VERSION = 512
SoftwareVersions = Annotated[str, Field(max_length=MAX_SOFTWARE_VERSION, pattern=TEXT_PATTERN)]


def long_string_values_problem(value: str) -> str | None:
    if len(value) > 64 and any(len(part) > 64 for part in re.split(r"[\\/]", value)):
        return "each value (separated by '\\' or '/') must be at most 64 characters"
    return None


# --- numbers -----------------------------------------------------------------------------------
# Strict: a boolean or a string is not a number. Never NaN or infinite.

Kvp = Annotated[float | None, Field(strict=True, allow_inf_nan=False, ge=0, le=1_000)]
ExposureMas = Annotated[float | None, Field(strict=True, allow_inf_nan=False, ge=0, le=100_000)]
PixelSpacingMm = Annotated[float | None, Field(strict=True, allow_inf_nan=False, gt=0, le=100)]
AgeYears = Annotated[float | None, Field(strict=True, allow_inf_nan=False, ge=0, le=130)]
Probability = Annotated[float | None, Field(strict=True, allow_inf_nan=False, ge=0, le=1)]
LatencyMs = Annotated[float | None, Field(strict=True, allow_inf_nan=False, ge=0,
                                          le=3_600_000)]


# --- timestamps -------------------------------------------------------------------------------

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
OUT_OF_RANGE = "is out of the range of dates once converted to UTC"


def _timestamp_text(value: Any) -> Any:
    """A timestamp arrives as ISO 8601 text (from Python also as a ``datetime``); a number is
    not one."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and len(value) <= 64 and _ISO_DATE.match(value):
        return value
    raise ValueError("must be an ISO 8601 date and time as a string, such as "
                     "2026-11-22T10:00:00Z")


Timestamp = Annotated[datetime, BeforeValidator(_timestamp_text)]


def as_utc(value: datetime) -> datetime:
    """UTC; naive means UTC. Raises OverflowError where the offset takes it past year 1 or
    9999."""
    return (value.replace(tzinfo=timezone.utc) if value.tzinfo is None
            else value.astimezone(timezone.utc))


# --- events ------------------------------------------------------------------------------------

@with_config(ConfigDict(extra="allow"))
class Scanner(TypedDict, total=False):
    """Acquisition metadata, bounded by the value representation of the DICOM element each
    comes from. Keys beyond these are kept, and stored as the row's tags (``KEY_PATTERN``
    names, ``MAX_TAGS_BYTES`` as JSON in all)."""

    manufacturer: LongString | None  # Manufacturer (LO)
    model: LongString | None  # ManufacturerModelName (LO)
    station: ShortString | None  # StationName (SH)
    site: LongString | None  # InstitutionName (LO), or the site's own name
    modality: CodeString | None  # Modality (CS)
    body_part: CodeString | None  # BodyPartExamined (CS)
    view: CodeString | None  # ViewPosition (CS)
    kvp: Kvp  # KVP (DS)
    exposure_mas: ExposureMas  # Exposure (IS), ExposureInmAs (DS)
    pixel_spacing_mm: PixelSpacingMm  # PixelSpacing (DS)
    photometric: CodeString | None  # PhotometricInterpretation (CS)
    software_version: SoftwareVersions | None  # SoftwareVersions (LO, multi-valued)
    vendor: LongString | None  # the normalised manufacturer


SCANNER_FIELDS = frozenset(Scanner.__annotations__)


@with_config(ConfigDict(extra="forbid"))
class Patient(TypedDict, total=False):
    id: PatientId | None  # PatientID (LO)
    sex: Literal["F", "M", "O", "U"] | None
    age_years: AgeYears


Score = Annotated[float, Field(ge=0, le=1, strict=True, allow_inf_nan=False)]
ScoreName = Annotated[str, Field(pattern=KEY_PATTERN)]


@with_config(ConfigDict(extra="forbid"))
class Prediction(TypedDict):
    scores: Annotated[dict[ScoreName, Score], Field(min_length=1, max_length=256)]
    positive: NotRequired[bool | None]
    threshold: NotRequired[Probability]


# Base64 of little-endian float32 values (``monitor_client.codec``), decoded by the service
# before validation.
Float32Base64 = Annotated[bytes, WithJsonSchema({
    "type": "string", "contentEncoding": "base64", "pattern": "^[A-Za-z0-9+/]*={0,2}$",
    "description": "base64 of the little-endian float32 values"})]


@with_config(ConfigDict(extra="forbid"))
class InferenceEvent(TypedDict):
    """One study read by the model. Once parsed: ``timestamp`` is UTC, ``study_uid`` is set,
    ``embedding`` (if any) is float32 bytes, and a DICOM header has been folded into
    ``scanner`` and ``patient`` and dropped."""

    event_id: EventId
    model: Name
    model_version: Name
    timestamp: Timestamp
    study_uid: NotRequired[StudyUid | None]
    scanner: NotRequired[Scanner | None]
    dicom: NotRequired[dict[str, Any] | None]  # DICOM JSON header; scanner/patient come from it
    patient: NotRequired[Patient | None]
    prediction: Prediction
    embedding: NotRequired[Float32Base64 | list[Annotated[float, Field(
        strict=True, allow_inf_nan=False)]] | None]
    latency_ms: NotRequired[LatencyMs]


def embedding_dim(event: InferenceEvent) -> int | None:
    raw = event.get("embedding")
    return None if raw is None else len(raw) // 4


class OverrideEvent(BaseModel):
    """One radiologist read of a study the model read (the partial, delayed label)."""

    model_config = ConfigDict(extra="forbid")

    event_id: EventId
    model: Name
    model_version: Name | None = None
    study_uid: StudyUid
    timestamp: Timestamp
    radiologist_positive: bool
    finding: Identifier | None = None
    agrees_with_model: bool | None = None
    reader: Identifier | None = None

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        try:
            return as_utc(value)
        except OverflowError:
            raise ValueError(OUT_OF_RANGE) from None
