"""`monitor serve`: the API under uvicorn, with the check scheduler beside it."""

from __future__ import annotations

import logging

import uvicorn

from monitor.api import create_app
from monitor.config import Settings
from monitor.runtime import Runtime

log = logging.getLogger(__name__)


def serve(settings: Settings, *, host: str, port: int) -> None:
    runtime = Runtime.open(settings)
    app = create_app(runtime)
    log.info("serving on http://%s:%d (API docs at /docs)", host, port)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        runtime.close()
