"""Shared fixtures: a fresh database per test on SQLite and, where a server runs, PostgreSQL.

Tests that need a real server (PostgreSQL, Prometheus, Alertmanager, Chromium) call
``require_server``: locally they skip when it is missing; under CI=true that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.config import Settings
from monitor.runtime import Runtime
from monitor.store.db import make_engine, upgrade

pytest_plugins = ["tests.simdb"]  # the simulated-deployment database, built once per session

SHARED_DATA = Path(
    os.environ.get("MONITOR_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared"
                   / "data")
).resolve()
POSTGRES_ADMIN_URL = os.environ.get(
    "MONITOR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEST_SECRET = "test-key-0123456789abcdef0123456789abcdef"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_server(available: bool, what: str) -> None:
    """Skip locally when a real server is missing; fail under CI, where .ci/run starts it."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} is not available")


def _postgres_admin():  # type: ignore[no-untyped-def]
    import psycopg

    try:
        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        return None


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    connection = _postgres_admin()
    if connection is None:
        return False
    connection.close()
    return True


@pytest.fixture
def postgres_url(postgres_available: bool) -> Iterator[str]:
    """A database of its own for this test, dropped afterwards."""
    require_server(postgres_available, f"PostgreSQL at {POSTGRES_ADMIN_URL}")
    name = f"monitor_test_{uuid.uuid4().hex[:12]}"
    admin = _postgres_admin()
    assert admin is not None
    admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'monitor.db'}"


def make_settings(database_url: str, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "secret_key": TEST_SECRET,
        "secret_key_file": tmp_path / "secret.key",
        "previous_secret_key_file": tmp_path / "secret.key.previous",
        "reports_dir": tmp_path / "reports",
        "check_interval_s": 0,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def open_runtime(database_url: str, tmp_path: Path, **overrides: object) -> Runtime:
    settings = make_settings(database_url, tmp_path, **overrides)
    upgrade(make_engine(settings.database_url))
    return Runtime.open(settings)


@pytest.fixture
def runtime(database_url: str, tmp_path: Path) -> Iterator[Runtime]:
    """A migrated database (SQLite, and PostgreSQL where it runs) and its runtime."""
    rt = open_runtime(database_url, tmp_path)
    yield rt
    rt.close()


@pytest.fixture
def sqlite_runtime(sqlite_url: str, tmp_path: Path) -> Iterator[Runtime]:
    rt = open_runtime(sqlite_url, tmp_path)
    yield rt
    rt.close()
