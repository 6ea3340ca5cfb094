"""The HTTP API: ingestion, read endpoints, and the routers of the later stages."""

from __future__ import annotations

import importlib
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query
from sqlalchemy import text

from monitor.api.auth import current_actor
from monitor.api.errors import install_error_handlers
from monitor.api.metrics import install as install_metrics
from monitor.runtime import Runtime
from monitor.store import repo
from monitor.store.db import session_scope

Actor = Annotated[str, Depends(current_actor)]


def create_app(runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime.open()
    app = FastAPI(
        title="Imaging AI monitor",
        version="0.1.0",
        description="Post-deployment monitoring of medical-imaging AI models.",
    )
    app.state.runtime = runtime
    install_error_handlers(app)

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
ROUTER_MODULES = ("ingest", "checks", "alerts", "registry")
