"""`monitor demo`: a simulated deployment built into the default database, then served.

The API and the dashboard start as soon as the events, the registry and the baselines are
in; the daily checks (about 46, several seconds each) then fill in behind them in a thread
of the server, which logs its progress ("daily checks: 12/46") while the dashboard's
Overview shows how many daily windows are checked. ``--no-serve`` runs every check first."""

from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from monitor import registry, simulate
from monitor.alerting import rollback
from monitor.alerting.engine import process_check_run
from monitor.checks import CheckOutcome, run_check
from monitor.checks.baselines import create_baseline
from monitor.collect.inprocess import InProcessCollector
from monitor.commands.dashboard import APP, streamlit_command
from monitor.config import Settings, ensure_secret_key, load_settings
from monitor.grid import GRID_LABEL, Window, grid_windows
from monitor.runtime import Runtime
from monitor.schema import TimestampBounds
from monitor.server import Backfill, serve
from monitor.simulate import SimulatedDeployment, simulate_deployment
from monitor.store import repo
from monitor.store.db import make_engine, session_scope, upgrade
from monitor.store.results import list_baselines, list_check_runs
from monitor.vocabulary import FALLBACK, PRODUCTION

log = logging.getLogger("monitor.demo")


def load_deployment(runtime: Runtime, deployment: SimulatedDeployment, *,
                    batch_size: int = 1000) -> int:
    """Ingest the simulated events in arrival order (the episode calendar is printed once,
    before, by ``SimulatedDeployment.describe``). Event ids are deterministic, so loading
    twice stores nothing new."""
    collector = InProcessCollector(runtime)
    new = 0
    total = len(deployment.inferences) + len(deployment.overrides)
    with tqdm(total=total, unit="event", desc="loading demo events") as bar:
        for batch in deployment.iter_batches(batch_size):
            log_batch = (collector.log_inferences if batch.kind == "inference"
                         else collector.log_overrides)
            new += log_batch(batch.events).new
            bar.update(len(batch.events))
    return new


def accepting(settings: Settings, deployment: SimulatedDeployment) -> Settings:
    """The settings, with the plausible timestamp range widened to hold every simulated event:
    simulated dates may lie before MONITOR_TIMESTAMP_EARLIEST or ahead of the clock."""
    stamps = [event["timestamp"] for event in (*deployment.inferences, *deployment.overrides)]
    first, last = (datetime.fromisoformat(stamp) for stamp in (min(stamps), max(stamps)))
    ahead_s = math.ceil((last - datetime.now(UTC)).total_seconds()) + 86_400
    return settings.model_copy(update={
        "timestamp_earliest": min(TimestampBounds.from_settings(settings).earliest, first),
        "timestamp_max_future_s": max(settings.timestamp_max_future_s, ahead_s),
    })


def build_demo(settings: Settings, *, seed: int, n_studies: int,
               steps: Sequence[DemoStep] | None = None) -> tuple[Runtime, SimulatedDeployment]:
    """Create the schema and key, load the deployment, then run ``steps`` (default
    ``DEMO_STEPS``: register versions, build baselines, run the daily checks). Returns the
    open runtime and the deployment."""
    deployment = simulate_deployment(seed=seed, n_studies=n_studies)
    print(deployment.describe())
    settings = accepting(settings, deployment)
    ensure_secret_key(settings)
    upgrade(make_engine(settings.database_url))
    runtime = Runtime.open(settings)
    with session_scope(runtime.sessions) as session:
        stored = repo.count_rows(session)["inferences"]
    if stored >= len(deployment.inferences):
        print(f"the database already holds {stored} inferences: loading skipped")
    else:
        new = load_deployment(runtime, deployment)
        print(f"stored {new} new events")
    for step in DEMO_STEPS if steps is None else steps:
        step(runtime, deployment)
    return runtime, deployment


def register_versions(runtime: Runtime, deployment: SimulatedDeployment) -> None:
    """Through the registry, audited: the newest version is ``production``, the one before it
    keeps serving part of the traffic as ``fallback`` (the rollback target)."""
    previous, newest = sorted(deployment.model_versions, key=_version_key)[-2:]
    with session_scope(runtime.sessions) as session:
        if registry.aliases(session, deployment.model).get(PRODUCTION):
            return
        for alias, version, reason in (
            (FALLBACK, previous, "demo: the previous version keeps part of the traffic"),
            (PRODUCTION, newest, "demo: validated on the retrospective test set"),
        ):
            rollback.promote(session, model=deployment.model, version=version, actor="demo",
                             reason=reason, alias=alias, now=deployment.start)
    print(f"registry: production -> {newest}, fallback -> {previous}")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def build_baselines(runtime: Runtime, deployment: SimulatedDeployment) -> None:
    """One baseline per version from the clean first week."""
    with session_scope(runtime.sessions) as session:
        existing = {b.version for b in list_baselines(session, model=deployment.model)}
    for version in deployment.model_versions:
        if version not in existing:
            baseline = create_baseline(runtime, model=deployment.model, version=version,
                                       start=deployment.baseline_start,
                                       end=deployment.baseline_end, created_by="demo")
            print(f"baseline for {deployment.model} {version}: {baseline.n_studies} studies, "
                  f"{deployment.baseline_start:%Y-%m-%d} to {deployment.baseline_end:%Y-%m-%d}")


def _evaluate_alerts_at_window_end(runtime: Runtime, outcome: CheckOutcome) -> None:
    """The alert rules, evaluated as of the window's end (the data is back-filled, so the
    wall clock would stamp October's alerts with today's date)."""
    process_check_run(runtime, outcome.check_run_id, now=outcome.window.end)


@dataclass(frozen=True)
class DailyChecks:
    """The demo's daily grid: ``total`` windows (every local day after each version's baseline
    week to the end of the deployment), of which ``todo`` are not stored yet, as (version,
    window), oldest first and by version within a day."""

    model: str
    total: int
    todo: tuple[tuple[str, Window], ...]

    @property
    def done_before(self) -> int:
        return self.total - len(self.todo)


def plan_daily_checks(runtime: Runtime, deployment: SimulatedDeployment) -> DailyChecks:
    """The checks the scheduler would have run (``grid_windows``), less those stored."""
    zone = runtime.settings.zone
    with session_scope(runtime.sessions) as session:
        baselines = {b.version: b for b in list_baselines(session, model=deployment.model)}
        done = {(r.version, r.window_start, r.window_end) for r in
                list_check_runs(session, model=deployment.model, limit=100_000)
                if r.window_label == GRID_LABEL}
    grid = []
    for version in deployment.model_versions:
        after = baselines[version].window_end or deployment.baseline_end
        grid += [(window.start, version, window) for window in
                 grid_windows(after=after, until=deployment.end, zone=zone)]
    grid.sort(key=lambda item: (item[0], item[1]))
    todo = tuple((version, window) for _, version, window in grid
                 if (version, window.start, window.end) not in done)
    return DailyChecks(model=deployment.model, total=len(grid), todo=todo)


def check_days(runtime: Runtime, plan: DailyChecks, *, stop: threading.Event | None = None,
               bar: bool = True) -> int:
    """Run the planned checks in order, each with the alert rules evaluated at its window's
    end; print the days that are not green and the streams at warning or page on them.
    Progress: a tqdm bar (``bar``), else one log line per check ("daily checks: 12/46").
    Stops before the next check once ``stop`` is set. Returns the checks run."""
    say = tqdm.write if bar else log.info
    if not bar:
        log.info("daily checks: %d/%d, running the rest in the background (the dashboard's "
                 "Overview shows how far they are)", plan.done_before, plan.total)
    ran = 0
    for version, window in tqdm(plan.todo, unit="check", desc="daily checks", disable=not bar):
        if stop is not None and stop.is_set():
            log.info("daily checks stopped at %d/%d: the next `monitor demo` runs the rest",
                     plan.done_before + ran, plan.total)
            break
        outcome = run_check(runtime, model=plan.model, version=version, start=window.start,
                            end=window.end, hooks=[_evaluate_alerts_at_window_end])
        ran += 1
        if outcome.health is not None and outcome.health.status != "green":
            streams = ", ".join(f"{s.stream} {s.level} (Z {s.statistic:.1f}, "
                                f"{s.days} days)" for s in outcome.escalated[:3])
            say(f"{outcome.day} {version}: health {outcome.health.status} "
                f"({outcome.health.score:.2f}): {streams}")
        if not bar:
            log.info("daily checks: %d/%d", plan.done_before + ran, plan.total)
    return ran


def run_daily_checks(runtime: Runtime, deployment: SimulatedDeployment) -> None:
    """Every daily check of the demo not yet stored, here and now (``--no-serve``)."""
    check_days(runtime, plan_daily_checks(runtime, deployment))


def checks_in_background(plan: DailyChecks) -> Backfill:
    """The planned checks as ``serve``'s back-fill: they run beside the API and the
    dashboard, stop on Ctrl-C, and hand over to the scheduler when done."""
    def work(runtime: Runtime, stop: threading.Event) -> None:
        ran = check_days(runtime, plan, stop=stop, bar=False)
        if ran == len(plan.todo):
            log.info("daily checks: all %d done", plan.total)

    return work


DemoStep = Callable[[Runtime, SimulatedDeployment], None]
DEMO_STEPS: tuple[DemoStep, ...] = (register_versions, build_baselines, run_daily_checks)
SERVE_STEPS: tuple[DemoStep, ...] = (register_versions, build_baselines)  # checks: beside


# The demo's alert rules ship inside the package, so an installed wheel finds them.
DEMO_ALERT_RULES = Path(simulate.__file__).resolve().parent / "demo-alert-rules.yml"


def cmd_demo(args: argparse.Namespace) -> int:
    """Build the demo. With ``--no-serve`` every daily check runs before returning; otherwise
    the API and the dashboard are served as soon as the baselines exist and the daily checks
    fill in behind them (``checks_in_background``)."""
    settings = load_settings()
    if settings.alert_rules_file is None:
        settings = settings.model_copy(update={"alert_rules_file": DEMO_ALERT_RULES})
    if not args.verbose:  # one line per check and alert would bury the progress bar
        for name in ("monitor.checks", "monitor.alerting", "monitor.checks.baselines"):
            logging.getLogger(name).setLevel(logging.WARNING)
    runtime, deployment = build_demo(settings, seed=args.seed, n_studies=args.studies,
                                     steps=DEMO_STEPS if args.no_serve else SERVE_STEPS)
    try:
        plan = None if args.no_serve else plan_daily_checks(runtime, deployment)
    finally:
        runtime.close()
    del deployment  # the events: not needed while serving
    if plan is None:
        return 0
    dashboard = start_dashboard(settings)
    try:
        print(f"dashboard: http://127.0.0.1:{settings.dashboard_port}   "
              f"API: http://{settings.host}:{settings.port}/docs   Ctrl-C stops both "
              "(and the daily checks)", flush=True)
        serve(settings, host=settings.host, port=settings.port,
              backfill=checks_in_background(plan) if plan.todo else None)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=10)
    return 0


def start_dashboard(settings: Settings) -> subprocess.Popen[bytes]:
    """The Streamlit dashboard beside the API, over the same database and alert rules."""
    env = {**os.environ, "DO_NOT_TRACK": "1", "MONITOR_DATABASE_URL": settings.database_url}
    if settings.alert_rules_file is not None:
        env["MONITOR_ALERT_RULES_FILE"] = str(settings.alert_rules_file)
    command = streamlit_command(app=APP, address="127.0.0.1", port=settings.dashboard_port)
    return subprocess.Popen(command, env=env)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = sub.add_parser("demo", help="build a simulated deployment into the database and "
                          "serve it")
    demo.add_argument("--seed", type=int, default=0,
                      help="the simulation's seed: the same seed gives the same events "
                      "(default 0)")
    demo.add_argument("--studies", type=int, default=21_000,
                      help="studies over the 30 simulated days (default 21000)")
    demo.add_argument("--no-serve", action="store_true",
                      help="build the data and run every daily check, then exit")
    demo.set_defaults(func=cmd_demo)
