"""Every error the service raises on purpose. Messages name the field, and show at most
``ECHO_LIMIT`` characters of any value that came from the input (``clip``)."""

from __future__ import annotations

ECHO_LIMIT = 64


def clip(value: object, limit: int = ECHO_LIMIT) -> str:
    """A value from the input as an error may show it: its ``repr`` for anything but a
    string, at most ``limit`` characters, with how much was left out."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class MonitorError(Exception):
    """Base class: anything the service reports to a user rather than crashing on."""


class ConfigError(MonitorError):
    """A setting has a value the service cannot use."""


class ValidationError(MonitorError):
    """An event or request is malformed. ``field`` names the offending part, ``index`` the
    position in a batch where there is one."""

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None):
        super().__init__(message)
        self.field = field
        self.index = index


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
