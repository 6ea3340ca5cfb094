"""`monitor serve`: the API under uvicorn, with the check scheduler and the alert delivery
loop beside it (and, for ``monitor demo``, the back-filled daily checks before the scheduler)."""

from __future__ import annotations

import gc
import ipaddress
import logging
import threading
from collections.abc import Callable, Sequence

import uvicorn

from monitor.alerting.engine import DeliveryLoop, on_check_complete
from monitor.api import create_app
from monitor.checks import CheckHook
from monitor.checks.scheduler import CheckScheduler
from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.runtime import Runtime

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


# Work that runs beside the API before the scheduled checks start: called with the server's
# runtime and an event that is set when the server stops (return soon after it is set).
Backfill = Callable[[Runtime, threading.Event], object]
BACKFILL_STOP_TIMEOUT_S = 120.0


class BackfillThread:
    """Runs a ``Backfill`` in a daemon thread, then calls ``then`` (starting the scheduler)
    unless it was stopped first. ``stop`` asks it to stop and waits for the work in progress
    (a check is not interrupted halfway)."""

    def __init__(self, work: Backfill, runtime: Runtime, *, then: Callable[[], None],
                 stop_timeout_s: float = BACKFILL_STOP_TIMEOUT_S):
        self.work, self.runtime, self.then = work, runtime, then
        self.stop_timeout_s = stop_timeout_s
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backfill", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self.work(self.runtime, self.stopping)
        except Exception:
            log.exception("the back-filled checks failed; scheduled checks take over")
        if not self.stopping.is_set():
            self.then()

    def stop(self) -> None:
        self.stopping.set()
        if not self._thread.is_alive():
            return
        log.info("stopping: waiting for the check in progress to finish")
        self._thread.join(self.stop_timeout_s)
        if self._thread.is_alive():
            log.warning("the check in progress did not finish within %.0f s; leaving it",
                        self.stop_timeout_s)


def serve(settings: Settings, *, host: str, port: int, backfill: Backfill | None = None
          ) -> None:
    """Serve the API until interrupted. ``backfill`` (``monitor demo``'s daily checks) runs
    in a thread beside the API from the start; the scheduler starts once it is done, so the
    two never check the same day."""
    runtime = Runtime.open(settings, background_checkpoint=True)
    hooks = (on_check_complete,)  # alert rules are evaluated after every check
    try:
        work = ServiceWork(runtime, hooks=hooks, backfill=backfill)
        # create_app imports the bootstrap admin and legacy tokens
        app = create_app(runtime, check_hooks=hooks, background=work)
        check_bind(host, api_open=app.state.token_verifier.is_open(),
                   insecure_open=settings.insecure_open)
    except BaseException:
        runtime.close()
        raise
    gc.freeze()  # the imported libraries' objects are never garbage: keep them out of GC passes
    log.info("serving on http://%s:%d (links at /, API docs at /docs, metrics at /metrics)",
             host, port)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        runtime.close()


class ServiceWork:
    """What runs beside the API, started and stopped by the app's lifespan: the check
    scheduler (it logs and does nothing when MONITOR_CHECK_INTERVAL_S=0) and the notification
    loop; with a ``backfill``, that first, and the scheduler once it is done."""

    def __init__(self, runtime: Runtime, *, hooks: Sequence[CheckHook],
                 backfill: Backfill | None = None):
        self.scheduler = CheckScheduler(runtime, hooks=hooks)
        self.delivery = DeliveryLoop(runtime, interval_s=30)
        self.backfill = None if backfill is None else BackfillThread(
            backfill, runtime, then=self.scheduler.start)

    def start(self) -> None:
        if self.backfill is None:
            self.scheduler.start()
        else:
            self.backfill.start()
        self.delivery.start()

    def stop(self) -> None:
        if self.backfill is not None:
            self.backfill.stop()  # before the scheduler: it may start the scheduler as it ends
        self.scheduler.stop()
        self.delivery.stop()
