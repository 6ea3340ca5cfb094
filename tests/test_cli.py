"""The `monitor` command: init, ingest with a summary of rejected lines, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monitor.cli import main
from monitor.runtime import Runtime
from monitor.store import repo
from monitor.store.db import session_scope
from tests.conftest import make_settings
from tests.factories import inference_event


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONITOR_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("MONITOR_SECRET_KEY_FILE", str(tmp_path / "key"))
    return tmp_path


def stored(tmp_path: Path) -> int:
    settings = make_settings(f"sqlite:///{tmp_path / 'cli.db'}", tmp_path,
                             secret_key=None, secret_key_file=tmp_path / "key")
    runtime = Runtime.open(settings)
    with session_scope(runtime.sessions) as session:
        return repo.count_rows(session)["inferences"]


def test_init_creates_key_and_schema_idempotently(env: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    assert "created pseudonymisation key" in capsys.readouterr().out
    assert main(["init"]) == 0
    assert "is at schema revision" in capsys.readouterr().out
    assert (env / "key").stat().st_mode & 0o777 == 0o600


def test_ingest_jsonl_reports_bad_lines_and_keeps_the_good(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["init"])
    lines = [json.dumps(inference_event()) for _ in range(5)]
    lines.insert(2, '{"event_id": oops')
    lines.insert(4, json.dumps(inference_event(prediction={"scores": {"x": 3}})))
    path = env / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["ingest", str(path), "--batch-size", "3"]) == 1
    out = capsys.readouterr().out
    assert "5 stored, 0 duplicates skipped, 2 rejected" in out
    assert "line 3: malformed JSON" in out
    assert "line 5: prediction.scores.x:" in out
    assert stored(env) == 5
    assert main(["ingest", str(path)]) == 1  # a re-run stores nothing twice
    assert "0 stored, 5 duplicates skipped" in capsys.readouterr().out


def test_ingest_parquet(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["init"])
    events = [inference_event(embedding=[0.1, 0.2]) for _ in range(4)]
    path = env / "events.parquet"
    pq.write_table(pa.Table.from_pylist(events), path)
    assert main(["ingest", str(path)]) == 0
    assert "4 stored" in capsys.readouterr().out


def test_errors_are_messages_not_tracebacks(env: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", str(env / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    main(["init"])
    (env / "key").unlink()
    assert main(["ingest", str(env / "missing.jsonl")]) == 2
