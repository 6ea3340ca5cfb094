"""``GET /metrics`` for Prometheus, and the middleware that instruments ingestion.

Wiring: ``install(app)`` includes ``router`` and adds ``IngestMetricsMiddleware``. Each app
gets its own registry (``app.state.metrics``), built on first use from the app's runtime.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitor.api.auth import Reader
from monitor.metrics import INGEST_KINDS, Schedule, ServiceMetrics, build_service_metrics

router = APIRouter()
_build_lock = threading.Lock()
_MAX_ERROR_BODY = 64 * 1024  # what the reject classifier reads of a 422 answer


def service_metrics(app: Any) -> ServiceMetrics:
    """The app's metrics, built on first use from ``app.state.runtime``."""
    metrics = getattr(app.state, "metrics", None)
    if metrics is None:
        with _build_lock:
            metrics = getattr(app.state, "metrics", None)
            if metrics is None:
                settings = app.state.runtime.settings
                metrics = build_service_metrics(
                    app.state.runtime.sessions, check_interval_s=settings.check_interval_s,
                    schedule=Schedule(settings.check_window, settings.zone))
                app.state.metrics = metrics
    return metrics


@router.get("/metrics", tags=["service"], summary="Prometheus metrics")
def metrics_endpoint(request: Request, _actor: Reader) -> Response:
    """Prometheus text format (OpenMetrics when the scraper asks for it); store metrics are
    read at this moment. Needs a token with the ``read`` role once tokens exist."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(service_metrics(request.app).registry),
                    headers={"Content-Type": content_type})


class IngestMetricsMiddleware:
    """Times ``POST /v1/inferences`` and ``POST /v1/overrides`` and counts their rejects by
    reason (from the status and, for 422, the error body's field). Other requests pass
    through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = INGEST_KINDS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if kind is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        instruments = service_metrics(scope["app"]).ingest
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering
        error_body = bytearray()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif (message["type"] == "http.response.body" and status == 422
                  and len(error_body) < _MAX_ERROR_BODY):
                error_body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            instruments.observe(kind=kind, status=status,
                                seconds=time.perf_counter() - started, body=bytes(error_body))


def install(app: FastAPI) -> None:
    """Add ``/metrics`` and the ingestion instrumentation to an app built by create_app (once:
    a second call changes nothing)."""
    if getattr(app.state, "metrics_installed", False):
        return
    app.state.metrics_installed = True
    app.include_router(router)
    app.add_middleware(IngestMetricsMiddleware)
    if hasattr(app.state, "runtime"):
        service_metrics(app)
