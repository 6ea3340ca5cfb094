"""The HTTP API: ingestion, read endpoints, and the routers of the later stages."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import text

from monitor.api.auth import current_actor
from monitor.api.errors import PayloadTooLarge, install_error_handlers
from monitor.api.metrics import install as install_metrics
from monitor.collect.ingest import IngestResult, store_inferences, store_overrides
from monitor.errors import BatchValidationError
from monitor.runtime import Runtime
from monitor.schema import INFERENCES, OVERRIDES, BatchParser
from monitor.store import repo
from monitor.store.db import session_scope

Actor = Annotated[str, Depends(current_actor)]


async def read_body(request: Request, max_bytes: int) -> bytearray:
    """The request body, refusing bodies over ``max_bytes`` (413) before reading them whole.
    Read into one buffer: a 2.7 MB batch is not copied again by a join."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > max_bytes:
            raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        body += chunk
    return body


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime.open()
    app = FastAPI(
        title="Imaging AI monitor",
        version="0.1.0",
        description="Post-deployment monitoring of medical-imaging AI models.",
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    settings = runtime.settings

    async def _ingest(request: Request, parser: BatchParser, store: Callable[..., IngestResult]
                      ) -> dict[str, int]:
        body = await read_body(request, settings.max_body_bytes)

        def validate_and_store() -> IngestResult:
            batch = parser.from_json(body)
            if len(batch) > settings.max_batch_events:
                raise BatchValidationError([{
                    "index": None, "field": "body",
                    "message": f"batch of {len(batch)} events exceeds the limit of "
                    f"{settings.max_batch_events} (MONITOR_MAX_BATCH_EVENTS)",
                }])
            return store(runtime, batch)

        result = await run_in_threadpool(validate_and_store)  # committed before we answer
        return {"accepted": result.accepted, "new": result.new, "duplicates": result.duplicates}

    @app.post("/v1/inferences", tags=["ingest"], summary="Log a batch of inference events")
    async def post_inferences(request: Request, _actor: Actor) -> dict[str, int]:
        """A JSON list of inference events (see the README's event contract). All or nothing:
        one invalid item rejects the batch with 422 naming its index and field."""
        return await _ingest(request, INFERENCES, store_inferences)

    @app.post("/v1/overrides", tags=["ingest"], summary="Log a batch of radiologist reads")
    async def post_overrides(request: Request, _actor: Actor) -> dict[str, int]:
        return await _ingest(request, OVERRIDES, store_overrides)

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return {"status": "ok"}

    @app.get("/v1/models", tags=["read"])
    def models(_actor: Actor, model: str | None = None) -> list[dict[str, Any]]:
        with session_scope(runtime.sessions) as session:
            return [vars(v) for v in repo.list_model_versions(session, model)]

    @app.get("/v1/models/{model}/versions/{version}", tags=["read"])
    def model_version(model: str, version: str, _actor: Actor) -> dict[str, Any]:
        with session_scope(runtime.sessions) as session:
            return vars(repo.get_model_version(session, model, version))

    @app.get("/v1/models/{model}/summary", tags=["read"])
    def model_summary(
        model: str,
        _actor: Actor,
        version: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        by: Literal["day", "site", "scanner", "version"] = "day",
    ) -> list[dict[str, Any]]:
        """Studies, positives, radiologist reads and overrides per day, site, scanner or
        version."""
        with session_scope(runtime.sessions) as session:
            return repo.summary(session, model, version=version, start=start, end=end, by=by)

    @app.get("/v1/inferences", tags=["read"])
    def inferences(
        model: str,
        _actor: Actor,
        version: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
        include_embedding: bool = False,
    ) -> list[dict[str, Any]]:
        """Stored events, newest first, without embeddings unless asked for."""
        with session_scope(runtime.sessions) as session:
            return repo.list_inferences(session, model, version=version, start=start, end=end,
                                        limit=limit, offset=offset,
                                        include_embedding=include_embedding)

    @app.get("/v1/overrides", tags=["read"])
    def overrides(
        model: str,
        _actor: Actor,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        with session_scope(runtime.sessions) as session:
            return repo.list_overrides(session, model, start=start, end=end, limit=limit,
                                       offset=offset)

    for name in ROUTER_MODULES:
        app.include_router(importlib.import_module(f"monitor.api.{name}").router)
    install_metrics(app)  # /metrics, and ingestion latency and rejects
    return app


# The later stages' routes, one module each under monitor/api/.
ROUTER_MODULES = ("checks", "alerts", "registry")
