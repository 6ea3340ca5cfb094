"""A small simulated deployment in a SQLite database, built once per test session.

What the template holds (``SIMDB``, ``SimulatedTemplate``):

* ``simulate_deployment(seed=0, n_studies=5_000, days=30, embedding_dim=64)`` with the
  default episodes (software-update day 10, new-vendor day 14, subgroup-drop day 17,
  override-rise day 20; ``monitor.simulate.episodes``), every inference and radiologist read
  ingested through ``InProcessCollector``; model ``cxr-triage``, versions ``1.4.0`` (75% of
  studies, status ``active``, alias ``production``) and ``1.3.0`` (25%, status ``active``).
* One baseline per version from the clean days 0-6 (``deployment.baseline_start`` to
  ``baseline_end``), ``created_by="simdb"``.
* Checks of ``1.4.0`` (``run_check``, default ``CheckOptions``) for the windows in
  ``CHECKED_WINDOWS``: ``clean`` day 8, ``software-update`` day 10, ``new-vendor`` day 14
  (each ``1d``: [start + d days, start + d + 1 days)) and ``late`` (``7d`` ending at the end
  of the deployment: subgroup-drop and override-rise). Their Evidently reports are in the
  template's reports folder.

Fixtures (register this module as a plugin in a test module: ``pytest_plugins =
["tests.simdb"]``; importing the fixture functions works too but trips ruff's F811):

* ``simulated_template`` (session scope): the ``SimulatedTemplate`` (paths, the
  ``SimulatedDeployment`` with its ground truth, baseline ids, ``check_run_ids`` by window
  name, ``window(name)`` -> (start, end)). Read-only: never open its database for writing.
* ``simulated_runtime`` (function scope): a ``Runtime`` on a private copy of the template
  database (and of its reports, under ``tmp_path / "reports"``, which is the runtime's
  ``Settings.reports_dir``), with the test secret key; write to it freely.

``populate(runtime, deployment)`` loads a deployment into any runtime (the ``runtime``
fixture's PostgreSQL database, say): ingest, register versions, baselines; no checks.
Building the template takes about half a minute on two cores.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from monitor_client.dicom import normalise_manufacturer
from sqlalchemy import select, text, update

from monitor.checks import run_check
from monitor.checks.baselines import create_baseline
from monitor.collect.inprocess import InProcessCollector
from monitor.runtime import Runtime
from monitor.simulate import SimulatedDeployment, simulate_deployment
from monitor.simulate.fleet import NEW_VENDOR_SCANNER, SOFTWARE_UPDATE
from monitor.store.db import session_scope
from monitor.store.models import ModelAlias, ModelVersion
from tests.conftest import open_runtime

MODEL = "cxr-triage"
PRODUCTION = "1.4.0"
PREVIOUS = "1.3.0"
SEED = 0
N_STUDIES = 5_000
DAYS = 30
EMBEDDING_DIM = 64
# What identifies the episodes' scanners in the data.
UPDATED_SCANNER = {"station": SOFTWARE_UPDATE.station, "scanner_model": "Ysio Max",
                   "software_version": SOFTWARE_UPDATE.new_version}
NEW_VENDOR = {"vendor": normalise_manufacturer(NEW_VENDOR_SCANNER.manufacturer),
              "scanner_model": NEW_VENDOR_SCANNER.model,
              "software_version": NEW_VENDOR_SCANNER.software_version}
# name -> (window label, first day of the window, length in days)
CHECKED_WINDOWS: dict[str, tuple[str, int, int]] = {
    "clean": ("1d", 8, 1),
    "software-update": ("1d", 10, 1),
    "new-vendor": ("1d", 14, 1),
    "late": ("7d", DAYS - 7, 7),
}


@dataclass
class SimulatedTemplate:
    directory: Path
    database: Path
    reports_dir: Path
    deployment: SimulatedDeployment
    baseline_ids: dict[str, int] = field(default_factory=dict)  # version -> baseline id
    check_run_ids: dict[str, int] = field(default_factory=dict)  # window name -> run id

    @property
    def start(self) -> datetime:
        return self.deployment.start

    def day(self, day: float) -> datetime:
        return self.deployment.start + timedelta(days=day)

    def window(self, name: str) -> tuple[datetime, datetime]:
        """[start, end) of a window of ``CHECKED_WINDOWS``."""
        _, first, length = CHECKED_WINDOWS[name]
        return self.day(first), self.day(first + length)


def simulate(*, seed: int = SEED, n_studies: int = N_STUDIES, days: int = DAYS,
             embedding_dim: int = EMBEDDING_DIM) -> SimulatedDeployment:
    return simulate_deployment(seed=seed, n_studies=n_studies, days=days,
                               embedding_dim=embedding_dim)


def register_versions(runtime: Runtime, *, model: str = MODEL, production: str = PRODUCTION,
                      active: tuple[str, ...] = (PRODUCTION, PREVIOUS)) -> None:
    """Mark versions active and point ``production`` at one (what the registry will do)."""
    now = datetime.now(UTC)
    with session_scope(runtime.sessions) as session:
        session.execute(update(ModelVersion)
                        .where(ModelVersion.model == model, ModelVersion.version.in_(active))
                        .values(status="active", updated_at=now))
        version_id = session.scalar(select(ModelVersion.id).where(
            ModelVersion.model == model, ModelVersion.version == production))
        session.merge(ModelAlias(model=model, alias="production", model_version_id=version_id,
                                 updated_at=now))


def populate(runtime: Runtime, deployment: SimulatedDeployment, *, batch_size: int = 1_000
             ) -> dict[str, int]:
    """Ingest a deployment, register its versions, create one baseline per version from its
    clean days. Returns baseline ids by version."""
    collector = InProcessCollector(runtime)
    for batch in deployment.iter_batches(batch_size=batch_size):
        if batch.kind == "inference":
            collector.log_inferences(batch.events)
        else:
            collector.log_overrides(batch.events)
    register_versions(runtime, model=deployment.model)
    return {
        version: create_baseline(runtime, model=deployment.model, version=version,
                                 start=deployment.baseline_start, end=deployment.baseline_end,
                                 created_by="simdb").id
        for version in deployment.model_versions
    }


def build_template(directory: Path) -> SimulatedTemplate:
    database = directory / "simulated.db"
    reports = directory / "reports"
    deployment = simulate()
    runtime = open_runtime(f"sqlite:///{database}", directory)  # reports: directory/reports
    try:
        template = SimulatedTemplate(directory, database, reports, deployment)
        template.baseline_ids = populate(runtime, deployment)
        for name, (label, first, length) in CHECKED_WINDOWS.items():
            outcome = run_check(runtime, model=MODEL, version=PRODUCTION, window=label,
                                now=template.day(first + length))
            template.check_run_ids[name] = outcome.check_run_id
        with runtime.engine.connect() as connection:
            connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    finally:
        runtime.close()
    return template


def _link_or_copy(source: str, target: str) -> None:
    """Reports are replaced (write + rename), never edited in place, so a hard link is a
    safe copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@pytest.fixture(scope="session")
def simulated_template(tmp_path_factory: pytest.TempPathFactory) -> SimulatedTemplate:
    return build_template(tmp_path_factory.mktemp("simdb"))


@pytest.fixture
def simulated_runtime(simulated_template: SimulatedTemplate, tmp_path: Path
                      ) -> Iterator[Runtime]:
    database = tmp_path / "monitor.db"
    shutil.copyfile(simulated_template.database, database)
    reports = tmp_path / "reports"
    shutil.copytree(simulated_template.reports_dir, reports, copy_function=_link_or_copy)
    runtime = open_runtime(f"sqlite:///{database}", tmp_path)  # reports: tmp_path/reports
    yield runtime
    runtime.close()
