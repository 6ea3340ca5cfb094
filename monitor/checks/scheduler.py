"""Scheduled checks: ``monitor serve`` wakes up every ``Settings.check_interval_s`` seconds
(0 switches it off: ``start`` only logs that) and checks what is due.

A round covers, for every model, the version the ``production`` alias points at and every
version with status ``active`` (``monitor.store.registry.monitored_versions``). What it checks
depends on ``Settings.check_window``:

* ``grid`` (the default): the daily calendar grid (``monitor.grid.grid_windows``). Every
  complete local day [midnight, next midnight) in ``Settings.timezone`` after the version's
  baseline (complete: the clock has passed its end, and data of a later day has arrived or
  two hours have passed; ``monitor.grid.grid_until``) is checked exactly once: a day with a
  stored ``1d`` run is not run again, and days go oldest first, because each day's
  sequential evidence builds on the days before it. A round checks at most
  ``max_days_per_round`` days per version, so a backlog (a new version, a restart after an
  outage) is worked off over several rounds, each logging its progress. A day whose check
  fails ends that version's round, so the next round retries it before the days after it.
* a window label (``1d``, ``7d``, ``last:500``): one check per version per round over that
  window, ending at the version's newest inference (the rolling window of earlier releases).

A version without a baseline, or any other error, is logged and skipped; the next version and
the next round go on. Each stored check calls the scheduler's ``hooks`` (``monitor serve``
passes the alerting engine's rule evaluation).

    scheduler = CheckScheduler(runtime)
    scheduler.start()
    ...
    scheduler.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from monitor_client.events import as_utc
from sqlalchemy.orm import Session

from monitor.checks import CheckHook, CheckOptions, CheckOutcome, run_check
from monitor.checks.baselines import require_baseline
from monitor.checks.windows import parse_window
from monitor.config import GRID_SCHEDULE
from monitor.grid import GRID_LABEL, Window, grid_until, grid_windows
from monitor.runtime import Runtime
from monitor.store import repo
from monitor.store import results as store
from monitor.store.db import session_scope
from monitor.store.registry import monitored_versions
from monitor.store.repo import newest_timestamp

log = logging.getLogger(__name__)

MAX_DAYS_PER_ROUND = 31


@dataclass
class RoundReport:
    """What one scheduled round did. ``pending`` counts, per version, the grid days still
    unchecked after the round (a backlog beyond ``max_days_per_round``)."""

    started_at: datetime
    seconds: float = 0.0
    outcomes: list[CheckOutcome] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # "model version" -> error
    pending: dict[str, int] = field(default_factory=dict)  # "model version" -> days


def due_grid_windows(session: Session, info: repo.ModelVersionInfo, *, zone: tzinfo,
                     now: datetime) -> list[Window]:
    """The version's grid days that are complete and not yet stored, oldest first (the
    baseline must exist: ``require_baseline`` raises naming the command that creates one)."""
    baseline = require_baseline(session, info)
    newest = newest_timestamp(session, info.id)
    if newest is None or baseline.window_end is None:
        return []
    windows = grid_windows(after=baseline.window_end, until=grid_until(now, newest, zone),
                           zone=zone)
    if not windows:
        return []
    done = {(as_utc(start), as_utc(end)) for start, end in store.stored_windows(
        session, info.id, label=GRID_LABEL, start=windows[0].start, end=windows[-1].end)}
    return [w for w in windows if (w.start, w.end) not in done]


class CheckScheduler:
    """Runs checks on an interval in a daemon thread; never dies on an error.

    ``clock`` gives "now" for the grid (the wall clock unless a test passes its own)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        interval_s: float | None = None,
        window: str | None = None,
        options: CheckOptions | None = None,
        hooks: Sequence[CheckHook] = (),
        max_days_per_round: int = MAX_DAYS_PER_ROUND,
        clock: Callable[[], datetime] | None = None,
    ):
        self.runtime = runtime
        self.interval_s = (runtime.settings.check_interval_s if interval_s is None
                           else interval_s)
        self.window = (window or runtime.settings.check_window).strip().lower()
        self.grid = self.window == GRID_SCHEDULE
        if not self.grid:
            parse_window(self.window)  # a bad label fails at start-up, not in the thread
        if max_days_per_round < 1:
            raise ValueError(f"max_days_per_round has value {max_days_per_round}; must be >= 1")
        self.max_days_per_round = max_days_per_round
        self.clock = clock or (lambda: datetime.now(UTC))
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
        what = (f"the daily grid in {self.runtime.settings.timezone}" if self.grid
                else f"window {self.window}")
        log.info("scheduled checks: waking every %gs, checking %s", self.interval_s, what)

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
            if self.grid:
                self._grid_round(info, report)
            else:
                self._rolling_check(info, report)
        report.seconds = time.perf_counter() - clock
        self.rounds += 1
        self.last_round = report
        log.info("scheduled check round %d: %d checks stored, %d versions failed, %.1fs",
                 self.rounds, len(report.outcomes), len(report.errors), report.seconds)
        return report

    def _check(self, info: repo.ModelVersionInfo, report: RoundReport, *,
               window: str | None = None, start: datetime | None = None,
               end: datetime | None = None) -> bool:
        name = f"{info.model} {info.version}"
        try:
            outcome = run_check(self.runtime, model=info.model, version=info.version,
                                window=window, start=start, end=end, options=self.options,
                                hooks=self.hooks)
        except Exception as exc:
            log.warning("scheduled check of %s failed: %s: %s", name, type(exc).__name__, exc)
            report.errors[name] = f"{type(exc).__name__}: {exc}"
            return False
        report.outcomes.append(outcome)
        return True

    def _rolling_check(self, info: repo.ModelVersionInfo, report: RoundReport) -> None:
        self._check(info, report, window=self.window)

    def _grid_round(self, info: repo.ModelVersionInfo, report: RoundReport) -> None:
        name = f"{info.model} {info.version}"
        try:
            with session_scope(self.runtime.sessions) as session:
                due = due_grid_windows(session, info, zone=self.runtime.settings.zone,
                                       now=self.clock())
        except Exception as exc:
            log.warning("scheduled checks of %s: cannot list its due days: %s: %s", name,
                        type(exc).__name__, exc)
            report.errors[name] = f"{type(exc).__name__}: {exc}"
            return
        if not due:
            return
        batch = due[: self.max_days_per_round]
        zone = self.runtime.settings.zone
        first, last = (w.start.astimezone(zone).date() for w in (batch[0], batch[-1]))
        if len(due) > len(batch):
            log.info("scheduled checks of %s: %d days due, checking %s to %s this round, "
                     "%d left for the next rounds", name, len(due), first, last,
                     len(due) - len(batch))
        else:
            log.info("scheduled checks of %s: checking %d day(s), %s to %s", name, len(batch),
                     first, last)
        checked = 0
        for window in batch:
            if self._stop.is_set() or not self._check(info, report, start=window.start,
                                                      end=window.end):
                break
            checked += 1
        if len(due) > checked:
            report.pending[name] = len(due) - checked
