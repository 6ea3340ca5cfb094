"""Every error leaves the API as JSON with the field named; nothing takes the service down."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from monitor.errors import (
    BatchValidationError,
    ConflictError,
    InsufficientDataError,
    MonitorError,
    NotFoundError,
    SchemaVersionError,
    ValidationError,
    clip,
)

log = logging.getLogger(__name__)

STATUS = (
    (BatchValidationError, 422),
    (ValidationError, 422),
    (NotFoundError, 404),
    (ConflictError, 409),
    (InsufficientDataError, 422),
    (SchemaVersionError, 503),
)


class PayloadTooLarge(MonitorError):
    pass


class Unauthorized(MonitorError):
    pass


class Forbidden(MonitorError):
    pass


def request_problems(errors: Sequence[Any]) -> list[dict[str, str]]:
    """FastAPI's validation errors as problems: the field and the message, never the input
    (a location part that came from the input, such as an unexpected key, is clipped)."""
    return [{"field": ".".join(clip(p) if isinstance(p, str) else str(p) for p in e["loc"]),
             "message": clip(e["msg"], 256)} for e in errors]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MonitorError)
    async def _monitor_error(_request: Request, exc: MonitorError) -> JSONResponse:
        if isinstance(exc, PayloadTooLarge):
            return JSONResponse({"detail": str(exc)}, status_code=413)
        if isinstance(exc, Unauthorized):
            return JSONResponse({"detail": str(exc)}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        if isinstance(exc, Forbidden):
            return JSONResponse({"detail": str(exc)}, status_code=403)
        if isinstance(exc, BatchValidationError):
            return JSONResponse({"detail": exc.problems}, status_code=422)
        status = next((code for kind, code in STATUS if isinstance(exc, kind)), 400)
        field = getattr(exc, "field", None)
        body: dict[str, object] = {"detail": str(exc)}
        if field:
            body["field"] = field
        return JSONResponse(body, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": request_problems(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", type(exc).__name__)
        return JSONResponse({"detail": "internal error; the request was not stored"},
                            status_code=500)
