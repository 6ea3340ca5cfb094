"""`monitor serve`: the API under uvicorn, with the check scheduler and the alert delivery
loop beside it."""

from __future__ import annotations

import gc
import logging

import uvicorn

from monitor.alerting import register_check_hook
from monitor.alerting.engine import DeliveryLoop
from monitor.api import create_app
from monitor.config import Settings
from monitor.runtime import Runtime
from monitor.scheduler import CheckScheduler

log = logging.getLogger(__name__)


def serve(settings: Settings, *, host: str, port: int) -> None:
    runtime = Runtime.open(settings, background_checkpoint=True)
    app = create_app(runtime)
    register_check_hook()  # alert rules are evaluated after every check
    scheduler = CheckScheduler(runtime)
    delivery = DeliveryLoop(runtime, interval_s=30)
    scheduler.start()  # logs and does nothing when MONITOR_CHECK_INTERVAL_S=0
    delivery.start()
    gc.freeze()  # the imported libraries' objects are never garbage: keep them out of GC passes
    log.info("serving on http://%s:%d (API docs at /docs, metrics at /metrics)", host, port)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        scheduler.stop()
        delivery.stop()
        runtime.close()
