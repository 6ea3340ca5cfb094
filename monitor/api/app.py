"""The HTTP API: ingestion, read endpoints, and the routers of the later stages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, Protocol

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from monitor.alerting.engine import on_check_complete
from monitor.api import alerts, checks, incidents, ingest, registry, tokens
from monitor.api.auth import Reader
from monitor.api.contract import install_contract
from monitor.api.errors import install_error_handlers
from monitor.api.home import router as home_router
from monitor.api.limits import install as install_body_limits
from monitor.api.metrics import install as install_metrics
from monitor.api.params import Offset, PathName, QueryModel, QueryName, UtcTime
from monitor.checks import CheckHook
from monitor.runtime import Runtime
from monitor.store import repo
from monitor.store.db import current_revision_of, head_revision, session_scope, unreadable_table
from monitor.store.keys import readiness_problem as keys_readiness_problem
from monitor.store.tokens import TokenVerifier, import_configured_tokens


def readiness_problem(runtime: Runtime) -> str | None:
    """Why the service should not take traffic, in a few words (no values, no secrets)."""
    try:
        with runtime.engine.connect() as connection:
            found, expected = current_revision_of(connection), head_revision()
            if found != expected:
                return f"database schema at revision {found or 'none'}, expected {expected}"
            table = unreadable_table(connection)
            if table is not None:
                return f"table {table} is not readable"
            connection.rollback()
            if runtime.keys is not None:
                return keys_readiness_problem(connection, runtime.keys)
    except DBAPIError as exc:
        return f"database unreachable or unreadable ({type(exc.orig).__name__})"
    return None


class Background(Protocol):
    """Work that runs beside the API while it serves (``monitor serve``: the check scheduler,
    the notification loop and the demo's back-filled checks)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def create_app(runtime: Runtime | None = None, *,
               check_hooks: Sequence[CheckHook] = (on_check_complete,),
               background: Background | None = None) -> FastAPI:
    """The API over ``runtime``. ``check_hooks`` run after each check the API runs (the alert
    rules by default); ``background`` starts with the app and stops with it."""
    runtime = runtime or Runtime.open()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if background is not None:
            background.start()
        try:
            yield
        finally:
            if background is not None:
                background.stop()

    app = FastAPI(
        title="Imaging AI monitor",
        version="0.1.0",
        description="Post-deployment monitoring of medical-imaging AI models.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.check_hooks = tuple(check_hooks)
    # Start-up: MONITOR_BOOTSTRAP_ADMIN_TOKEN and the legacy MONITOR_API_TOKENS into the store.
    import_configured_tokens(runtime.sessions, runtime.settings)
    app.state.token_verifier = TokenVerifier(runtime.sessions)
    install_error_handlers(app)

    app.state.body_limits = install_body_limits(app, lambda: runtime.settings)
    app.include_router(home_router)  # GET /: links to the docs, the dashboard, metrics

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers. No database work (that is ``/readyz``)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"], responses={503: {"description": "not ready"}})
    def readyz() -> JSONResponse:
        """Readiness: the database is reachable, its schema at head, the service's tables
        readable and its key fingerprints those of this process's keys."""
        problem = readiness_problem(runtime)
        if problem is not None:
            return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/v1/models", tags=["read"])
    def models(_actor: Reader, model: QueryName = None) -> list[dict[str, Any]]:
        with session_scope(runtime.sessions) as session:
            return [vars(v) for v in repo.list_model_versions(session, model)]

    @app.get("/v1/models/{model}/versions/{version}", tags=["read"])
    def model_version(model: PathName, version: PathName, _actor: Reader) -> dict[str, Any]:
        with session_scope(runtime.sessions) as session:
            return vars(repo.get_model_version(session, model, version))

    @app.get("/v1/models/{model}/summary", tags=["read"])
    def model_summary(
        model: PathName,
        _actor: Reader,
        version: QueryName = None,
        start: UtcTime = None,
        end: UtcTime = None,
        by: Literal["day", "site", "scanner", "version"] = "day",
    ) -> list[dict[str, Any]]:
        """Studies, positives, radiologist reads and overrides per day, site, scanner or
        version."""
        with session_scope(runtime.sessions) as session:
            return repo.summary(session, model, version=version, start=start, end=end, by=by)

    @app.get("/v1/inferences", tags=["read"])
    def inferences(
        model: QueryModel,
        _actor: Reader,
        version: QueryName = None,
        start: UtcTime = None,
        end: UtcTime = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Offset = 0,
        include_embedding: bool = False,
    ) -> list[dict[str, Any]]:
        """Stored events, newest first, without embeddings unless asked for."""
        with session_scope(runtime.sessions) as session:
            return repo.list_inferences(session, model, version=version, start=start, end=end,
                                        limit=limit, offset=offset,
                                        include_embedding=include_embedding)

    @app.get("/v1/overrides", tags=["read"])
    def overrides(
        model: QueryModel,
        _actor: Reader,
        start: UtcTime = None,
        end: UtcTime = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Offset = 0,
    ) -> list[dict[str, Any]]:
        with session_scope(runtime.sessions) as session:
            return repo.list_overrides(session, model, start=start, end=end, limit=limit,
                                       offset=offset)

    for router in ROUTERS:
        app.include_router(router)
    install_contract(app)  # JSON only (415), ingestion bodies in the OpenAPI document
    install_metrics(app)  # /metrics, and ingestion latency and rejects
    return app


# The later stages' routes, one module each under monitor/api/, in the order of the data flow.
ROUTERS = (ingest.router, checks.router, alerts.router, incidents.router, registry.router,
           tokens.router)
