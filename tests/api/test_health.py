"""/healthz (liveness) and /readyz (readiness), unauthenticated, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import make_url, text

from monitor.api import create_app
from monitor.runtime import Runtime
from monitor.store.models import PseudonymKey
from tests.conftest import open_runtime


def test_ready_then_not_when_the_inference_table_is_gone(token_client: TestClient,
                                                           runtime: Runtime) -> None:
    assert token_client.get("/v1/models").status_code == 401  # tokens are configured
    assert token_client.get("/healthz").json() == {"status": "ok"}
    assert token_client.get("/readyz").json() == {"status": "ready"}
    with runtime.engine.begin() as connection:
        connection.execute(text("DROP TABLE inference CASCADE"
                                if connection.dialect.name == "postgresql"
                                else "DROP TABLE inference"))
    answer = token_client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "unavailable", "reason": "table inference is not readable"}
    assert token_client.get("/healthz").status_code == 200  # alive, though not ready


def test_not_ready_when_the_schema_or_the_key_differs(runtime: Runtime) -> None:
    client = TestClient(create_app(runtime))
    with runtime.engine.begin() as connection:
        connection.execute(PseudonymKey.__table__.update().values(fingerprint="0" * 64))
    answer = client.get("/readyz")
    assert answer.status_code == 503 and "pseudonymisation keys differ" in answer.json()["reason"]
    with runtime.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["reason"].startswith("database schema at revision 0001, expected")


def test_a_corrupt_sqlite_file_is_not_ready_and_not_a_server_error(
    sqlite_url: str, tmp_path: Path
) -> None:
    runtime = open_runtime(sqlite_url, tmp_path)
    client = TestClient(create_app(runtime))
    assert client.get("/readyz").status_code == 200
    runtime.engine.dispose()
    database = Path(str(make_url(sqlite_url).database))
    for leftover in (Path(f"{database}-wal"), Path(f"{database}-shm")):
        leftover.unlink(missing_ok=True)
    database.write_bytes(b"this is not an SQLite database" * 200)
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "unavailable",
                             "reason": "database unreachable or unreadable (DatabaseError)"}
    assert client.get("/healthz").status_code == 200
    runtime.close()
