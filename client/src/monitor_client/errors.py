"""The errors a caller of the client, and the service itself, report rather than crash on.
Messages name the field, and show at most ``ECHO_LIMIT`` characters of any value that came
from the input (``clip``)."""

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
    """Base class: anything reported to a user rather than crashed on."""


class ConfigError(MonitorError):
    """A setting has a value that cannot be used."""


class ValidationError(MonitorError):
    """An event or request is malformed. ``field`` names the offending part, ``index`` the
    position in a batch where there is one."""

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None):
        super().__init__(message)
        self.field = field
        self.index = index
