"""`monitor demo`: a simulated deployment built into the default database, then served."""

from __future__ import annotations

import argparse
import logging

from tqdm import tqdm

from monitor.collect.inprocess import InProcessCollector
from monitor.config import Settings, ensure_secret_key, load_settings
from monitor.runtime import Runtime
from monitor.simulate import SimulatedDeployment, simulate_deployment
from monitor.store import repo
from monitor.store.db import make_engine, session_scope, upgrade

log = logging.getLogger("monitor.demo")


def load_deployment(runtime: Runtime, deployment: SimulatedDeployment, *,
                    batch_size: int = 1000) -> int:
    """Ingest the simulated events in arrival order, announcing each episode as it starts.
    Event ids are deterministic, so loading twice stores nothing new."""
    collector = InProcessCollector(runtime)
    new = 0
    total = len(deployment.inferences) + len(deployment.overrides)
    with tqdm(total=total, unit="event", desc="loading demo events") as bar:
        for batch in deployment.iter_batches(batch_size):
            for episode in batch.episodes_started:
                tqdm.write(episode.log_line())
            log_batch = (collector.log_inferences if batch.kind == "inference"
                         else collector.log_overrides)
            new += log_batch(batch.events).new
            bar.update(len(batch.events))
    return new


def build_demo(settings: Settings, *, seed: int, n_studies: int) -> Runtime:
    """Create the schema and key, load the deployment, register versions, build baselines and
    run the daily checks. Returns the open runtime."""
    ensure_secret_key(settings)
    upgrade(make_engine(settings.database_url))
    runtime = Runtime.open(settings)
    deployment = simulate_deployment(seed=seed, n_studies=n_studies)
    print(deployment.describe())
    with session_scope(runtime.sessions) as session:
        stored = repo.count_rows(session)["inferences"]
    if stored >= len(deployment.inferences):
        print(f"the database already holds {stored} inferences: loading skipped")
    else:
        new = load_deployment(runtime, deployment)
        print(f"stored {new} new events")
    for step in DEMO_STEPS:
        step(runtime, deployment)
    return runtime


# Later stages add their demo steps (registry, baselines, checks): fn(runtime, deployment).
DEMO_STEPS: list = []


def cmd_demo(args: argparse.Namespace) -> int:
    settings = load_settings()
    runtime = build_demo(settings, seed=args.seed, n_studies=args.studies)
    if args.no_serve:
        runtime.close()
        return 0
    runtime.close()
    from monitor.server import serve

    serve(settings, host=settings.host, port=settings.port)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = sub.add_parser("demo", help="build a simulated deployment into the database and "
                          "serve it")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--studies", type=int, default=21_000)
    demo.add_argument("--no-serve", action="store_true", help="build the data, then exit")
    demo.set_defaults(func=cmd_demo)
