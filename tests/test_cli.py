"""The `monitor` command: init, ingest with a summary of rejected lines, clear errors."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monitor.cli import build_parser, main
from monitor.commands.core import ingest_file
from monitor.errors import BatchValidationError
from monitor.runtime import Runtime
from monitor.store import repo
from monitor.store.db import session_scope
from tests.conftest import TEST_SECRET, make_settings
from tests.factories import inference_event
from tests.servers import free_port


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
    assert "5 stored, 0 duplicates skipped, 2 lines rejected" in out
    assert "line 3: malformed JSON" in out
    assert "line 5: prediction.scores.x:" in out
    assert stored(env) == 5
    assert main(["ingest", str(path)]) == 1  # a re-run stores nothing twice
    assert "0 stored, 5 duplicates skipped" in capsys.readouterr().out


def test_ingest_counts_rejected_lines_not_their_problems(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["init"])
    three_problems = inference_event(prediction={"scores": {"x": 3}}, latency_ms=-1,
                                     timestamp="yesterday")
    lines = [json.dumps(inference_event()), json.dumps(three_problems),
             json.dumps(inference_event())]
    path = env / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["ingest", str(path)]) == 1
    out = capsys.readouterr().out
    assert "2 stored, 0 duplicates skipped, 1 line rejected" in out
    (listed,) = [line for line in out.splitlines() if line.startswith("  line ")]
    assert listed.startswith("  line 2: ")
    for field in ("timestamp:", "prediction.scores.x:", "latency_ms:"):
        assert field in listed


def test_ingest_counts_every_line_of_a_batch_refused_as_a_whole(tmp_path: Path) -> None:
    """A problem that names no line (the batch as a whole) leaves every line of the batch
    unstored: each is counted as rejected, not lost without a word."""
    class Refusing:
        def log_inferences(self, events: list[Any]) -> Any:
            raise BatchValidationError([{"index": None, "field": "body",
                                         "message": "too many events"}])

    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(inference_event()) + "\n" for _ in range(3)))
    new, duplicates, rejected = ingest_file(Refusing(), path,  # type: ignore[arg-type]
                                            kind="inference", batch_size=2)
    assert (new, duplicates) == (0, 0)
    assert rejected == [(1, "body: too many events"), (2, "body: too many events"),
                        (3, "body: too many events")]


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


@pytest.fixture
def restore_umask() -> Iterator[None]:
    """``main`` makes the process's files private (umask 077); the other tests' files are
    not this test's business."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_everything_the_service_writes_is_private(
    env: Path, restore_umask: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`monitor init`, an ingest and a check writing its report: files 0600, directories
    0700, the database's WAL and shared-memory files included."""
    os.umask(0o022)  # a usual shell's umask: the service tightens it itself
    reports = env / ".monitor" / "reports"
    rng = random.Random(0)
    lines = []
    for i in range(240):  # two days of studies: a baseline day and a checked day
        event = inference_event(
            timestamp=f"2026-11-{20 + i // 120:02d}T{(i % 120) // 6:02d}:{i % 60:02d}:00Z",
            prediction={"scores": {"pneumothorax": rng.random()}})
        event["scanner"]["kvp"] = 100 + rng.random() * 20
        lines.append(json.dumps(event))
    (env / "events.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["init"]) == 0
    assert main(["ingest", str(env / "events.jsonl")]) == 0
    assert main(["baseline", "create", "--model", "cxr-triage", "--version", "1.4.0",
                 "--from", "2026-11-20T00:00:00Z", "--to", "2026-11-21T00:00:00Z"]) == 0
    assert main(["check", "--model", "cxr-triage", "--version", "1.4.0",
                 "--from", "2026-11-21T00:00:00Z", "--to", "2026-11-22T00:00:00Z",
                 "--permutations", "50"]) == 0
    report = Path(capsys.readouterr().out.split("report: ")[1].splitlines()[0])
    assert report.is_relative_to(Path(".monitor/reports"))
    assert mode(env / ".monitor") == 0o700 and mode(env / "key") == 0o600
    directories = [path for path in reports.rglob("*") if path.is_dir()]
    assert directories and all(mode(path) == 0o700 for path in [reports, *directories])
    assert mode(env / report) == 0o600
    runtime = Runtime.open(make_settings(f"sqlite:///{env / 'cli.db'}", env, secret_key=None,
                                         secret_key_file=env / "key"))
    try:
        with session_scope(runtime.sessions) as session:
            assert repo.count_rows(session)["inferences"] == 240  # -wal and -shm exist now
        files = [env / "cli.db", env / "cli.db-wal", env / "cli.db-shm"]
        assert [mode(path) for path in files] == [0o600] * 3
    finally:
        runtime.close()


def one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"monitor {command}: error: ")
    return lines[0]


def test_start_up_failures_are_one_line_and_exit_2(
    env: Path, restore_umask: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    check = ["check", "--model", "cxr-triage", "--no-report"]
    assert main(["init"]) == 0
    capsys.readouterr()

    monkeypatch.setenv("MONITOR_SECRET_KEY", "another-key-0123456789abcdef0123456789abcdef")
    assert main(check) == 2
    assert "differs from the one this database was created with" in one_error_line(
        capsys.readouterr().err, "check")
    monkeypatch.delenv("MONITOR_SECRET_KEY")

    monkeypatch.setenv("MONITOR_DATABASE_URL", f"sqlite:///{env / 'empty.db'}")
    assert main(check) == 2  # no schema: not at head
    assert "run `monitor init`" in one_error_line(capsys.readouterr().err, "check")

    (env / "corrupt.db").write_bytes(b"not an SQLite database" * 100)
    monkeypatch.setenv("MONITOR_DATABASE_URL", f"sqlite:///{env / 'corrupt.db'}")
    for command in (check, ["serve"]):
        assert main(command) == 2
        line = one_error_line(capsys.readouterr().err, command[0])
        assert line.endswith(f"cannot use the database sqlite:///{env / 'corrupt.db'}: "
                             "file is not a database")


def test_serve_on_an_unreachable_database_masks_the_password(tmp_path: Path) -> None:
    """As an operator sees it: a real process, its stderr, no traceback, no password."""
    port = free_port()  # nothing listens there
    environment = {**os.environ, "DO_NOT_TRACK": "1",
                   "MONITOR_DATABASE_URL": f"postgresql://monitor:pw-s3cret@127.0.0.1:{port}/m",
                   "MONITOR_SECRET_KEY": TEST_SECRET}
    finished = subprocess.run([sys.executable, "-m", "monitor.cli", "serve"], cwd=tmp_path,
                              env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 2, finished.stderr
    assert "Traceback" not in finished.stderr and "pw-s3cret" not in finished.stderr
    errors = [line for line in finished.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1
    assert errors[0].startswith("monitor serve: error: cannot use the database "
                                f"postgresql+psycopg://monitor:***@127.0.0.1:{port}/m: ")
    assert "Connection refused" in errors[0] or "connection failed" in errors[0]


def _parsers(parser: argparse.ArgumentParser, path: str | None = None
             ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The parser and every subcommand's, sub-subcommands included, with their command line."""
    path = path or parser.prog
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_every_option_and_positional_of_every_command_has_help() -> None:
    missing, commands = [], 0
    for path, parser in _parsers(build_parser()):
        commands += 1
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert commands > 30  # the walk reached the sub-subcommands (token create, alerts ack...)
    assert missing == []


def test_the_help_walk_sees_a_bare_argument() -> None:
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers().add_parser("y").add_subparsers().add_parser("z")
    sub.add_argument("--bare")
    found = [(path, action.dest) for path, p in _parsers(parser) for action in p._actions
             if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
             and not action.help]
    assert found == [("x y z", "bare")]
