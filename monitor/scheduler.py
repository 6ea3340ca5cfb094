"""Scheduled checks: ``monitor serve`` runs every monitored version's check on an interval.

``CheckScheduler(runtime)`` runs, in a daemon thread, one round at start and then one every
``Settings.check_interval_s`` seconds (0 switches it off: ``start`` only logs that). A round
checks, for every model, the version the ``production`` alias points at and every version
with status ``active`` (``monitor.baselines.monitored_versions``) over
``Settings.check_window``, ending at the version's newest inference. A version without a
baseline, or any other error, is logged and skipped; the next version and the next round go
on. Each stored check calls the hooks of ``monitor.checks.on_check_complete`` (the alerting
engine evaluates its rules there), or the scheduler's own ``hooks`` when given.

    scheduler = CheckScheduler(runtime)
    scheduler.start()
    ...
    scheduler.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from monitor.baselines import monitored_versions
from monitor.checks import CheckHook, CheckOptions, CheckOutcome, run_check
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.windows import parse_window

log = logging.getLogger(__name__)


@dataclass
class RoundReport:
    """What one scheduled round did."""

    started_at: datetime
    seconds: float = 0.0
    outcomes: list[CheckOutcome] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # "model version" -> error


class CheckScheduler:
    """Runs checks on an interval in a daemon thread; never dies on an error."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        interval_s: float | None = None,
        window: str | None = None,
        options: CheckOptions | None = None,
        hooks: Sequence[CheckHook] | None = None,
    ):
        self.runtime = runtime
        self.interval_s = (runtime.settings.check_interval_s if interval_s is None
                           else interval_s)
        self.window = window or runtime.settings.check_window
        parse_window(self.window)  # a bad label fails at start-up, not in the thread
        self.options = options
        self.hooks = hooks
        self.rounds = 0
        self.last_round: RoundReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.interval_s <= 0:
            log.info("scheduled checks are off (MONITOR_CHECK_INTERVAL_S=0)")
            return
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="check-scheduler", daemon=True)
        self._thread.start()
        log.info("scheduled checks every %gs over window %s", self.interval_s, self.window)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to stop and wait for the round in progress (up to ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_round()
            except Exception:  # run_round guards each check; this guards the guard
                log.exception("scheduled check round failed")
            self._stop.wait(self.interval_s)

    def run_round(self) -> RoundReport:
        """Check every monitored version once (also callable directly, without the thread)."""
        report = RoundReport(started_at=datetime.now(UTC))
        clock = time.perf_counter()
        try:
            with session_scope(self.runtime.sessions) as session:
                versions = monitored_versions(session)
        except Exception as exc:
            log.exception("scheduled checks: cannot list model versions")
            report.errors["*"] = f"{type(exc).__name__}: {exc}"
            versions = []
        for info in versions:
            if self._stop.is_set():
                break
            name = f"{info.model} {info.version}"
            try:
                outcome = run_check(self.runtime, model=info.model, version=info.version,
                                    window=self.window, options=self.options, hooks=self.hooks)
            except Exception as exc:
                log.warning("scheduled check of %s failed: %s: %s", name,
                            type(exc).__name__, exc)
                report.errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            report.outcomes.append(outcome)
        report.seconds = time.perf_counter() - clock
        self.rounds += 1
        self.last_round = report
        log.info("scheduled check round %d: %d versions checked, %d failed, %.1fs",
                 self.rounds, len(report.outcomes), len(report.errors), report.seconds)
        return report
