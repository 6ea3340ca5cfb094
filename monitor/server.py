"""`monitor serve`: the API under uvicorn, with the check scheduler and the alert delivery
loop beside it."""

from __future__ import annotations

import gc
import ipaddress
import logging

import uvicorn

from monitor.alerting import register_check_hook
from monitor.alerting.engine import DeliveryLoop
from monitor.api import create_app
from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.runtime import Runtime
from monitor.scheduler import CheckScheduler

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``; anything else (0.0.0.0, a name) may be reachable."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, api_open: bool, insecure_open: bool) -> None:
    """Refuse to serve an open API (no token in the database) beyond loopback, unless
    ``insecure_open`` says so, which is logged loudly."""
    if not api_open:
        return
    if is_loopback(host):
        log.warning("no API token in the database: the API is open to every process on this "
                    "machine (actor 'anonymous'); create one with `monitor token create --name "
                    "NAME --role admin` to require tokens")
        return
    if not insecure_open:
        raise ConfigError(
            f"refusing to serve {host} with no API token in the database (anyone could "
            "promote, roll back or read): create one with `monitor token create --name NAME "
            "--role admin`, bind 127.0.0.1, or pass --insecure-open for a lab")
    log.warning("INSECURE: serving %s with NO AUTHENTICATION (--insecure-open / "
                "MONITOR_INSECURE_OPEN): anyone who reaches this address can read, ingest, "
                "promote and roll back as 'anonymous'", host)


def serve(settings: Settings, *, host: str, port: int) -> None:
    runtime = Runtime.open(settings, background_checkpoint=True)
    try:
        app = create_app(runtime)  # imports the bootstrap admin and legacy tokens
        check_bind(host, api_open=app.state.token_verifier.is_open(),
                   insecure_open=settings.insecure_open)
    except BaseException:
        runtime.close()
        raise
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
