"""Every error the service raises on purpose. The base classes and ``clip`` are the event
contract's (``monitor_client.errors``), so an error from the client's DICOM reading or
embedding codec is the service's error too."""

from __future__ import annotations

from monitor_client.errors import ECHO_LIMIT, ConfigError, MonitorError, ValidationError, clip

__all__ = [
    "ECHO_LIMIT", "BatchValidationError", "ConfigError", "ConflictError",
    "EmbeddingLengthError", "InsufficientDataError", "MonitorError", "NotFittedError",
    "NotFoundError", "SchemaVersionError", "ValidationError", "clip",
]


class BatchValidationError(ValidationError):
    """A batch was rejected as a whole; ``problems`` lists every bad item as
    ``{"index": i, "field": "prediction.scores.x", "message": "..."}``."""

    def __init__(self, problems: list[dict[str, object]]):
        first = problems[0]
        super().__init__(
            f"item {first['index']}: {first['field']}: {first['message']}"
            + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""),
            field=str(first["field"]),
            index=first["index"] if isinstance(first["index"], int) else None,
        )
        self.problems = problems


class EmbeddingLengthError(ValidationError):
    """An embedding's length differs from the one registered for its model version."""


class NotFoundError(MonitorError):
    """A model, version, baseline, alert or result does not exist."""


class ConflictError(MonitorError):
    """The request contradicts the stored state (a rollback to a version without baseline, ...)."""


class NotFittedError(MonitorError):
    """A detector was used before ``fit``."""


class InsufficientDataError(MonitorError):
    """Too few observations for a test to mean anything."""


class SchemaVersionError(MonitorError):
    """The database schema is not at the revision this code expects (run ``monitor init``)."""
