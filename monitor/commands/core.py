"""`monitor init`, `monitor serve`, `monitor ingest`."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from monitor.collect.inprocess import InProcessCollector
from monitor.config import ensure_secret_key, load_settings
from monitor.errors import BatchValidationError, MonitorError
from monitor.store.db import make_engine, upgrade

log = logging.getLogger("monitor")


def cmd_init(_args: argparse.Namespace) -> int:
    settings = load_settings()
    created = ensure_secret_key(settings)
    if created:
        print(f"created pseudonymisation key {created} (mode 0600): keep it safe and out of "
              "the database backups; losing it breaks the link of new events to old ones")
    before, after = upgrade(make_engine(settings.database_url))
    where = settings.database_url.split("@")[-1]
    if before == after:
        print(f"database {where} is at schema revision {after}")
    else:
        print(f"database {where}: schema {before or 'empty'} -> {after}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from monitor.server import serve

    settings = load_settings()
    serve(settings, host=args.host or settings.host, port=args.port or settings.port)
    return 0


def _read_lines(path: Path) -> Iterator[tuple[int, Any, int]]:
    """(line number, parsed object or the JSON error, bytes read) for JSONL; rows of Parquet."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        per_row = path.stat().st_size // max(table.num_rows, 1)
        for number, row in enumerate(table.to_pylist(), start=1):
            yield number, row, per_row
        return
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), len(line)
            except json.JSONDecodeError as exc:
                yield number, exc, len(line)


def ingest_file(collector: InProcessCollector, path: Path, *, kind: str, batch_size: int
                ) -> tuple[int, int, list[tuple[int, str]]]:
    """Import a JSONL or Parquet file. Good lines are stored in batches; a bad line is named
    with its reason and skipped, never taking its batch down. Returns (new, duplicates,
    rejected)."""
    log_batch = collector.log_inferences if kind == "inference" else collector.log_overrides
    new = duplicates = 0
    rejected: list[tuple[int, str]] = []
    batch: list[tuple[int, Any]] = []

    def flush() -> None:
        nonlocal new, duplicates
        if not batch:
            return
        try:
            result = log_batch([item for _, item in batch])
            new, duplicates = new + result.new, duplicates + result.duplicates
        except BatchValidationError as exc:
            bad = {p["index"] for p in exc.problems}
            for problem in exc.problems:
                if problem["index"] is not None:
                    line = batch[int(problem["index"])][0]
                    rejected.append((line, f"{problem['field']}: {problem['message']}"))
            good = [item for i, (_, item) in enumerate(batch) if i not in bad]
            if good and None not in bad:
                result = log_batch(good)
                new, duplicates = new + result.new, duplicates + result.duplicates
        batch.clear()

    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
              desc=f"ingest {path.name}") as bar:
        for number, item, nbytes in _read_lines(path):
            bar.update(nbytes)
            if isinstance(item, json.JSONDecodeError):
                rejected.append((number, f"malformed JSON: {item.msg}"))
                continue
            batch.append((number, item))
            if len(batch) >= batch_size:
                flush()
        flush()
    return new, duplicates, sorted(rejected)


def cmd_ingest(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.exists():
        raise MonitorError(f"no such file: {path}")
    collector = InProcessCollector.open(load_settings())
    try:
        new, duplicates, rejected = ingest_file(collector, path, kind=args.kind,
                                                batch_size=args.batch_size)
    finally:
        collector.close()
    print(f"{path}: {new} stored, {duplicates} duplicates skipped, {len(rejected)} rejected")
    for line, reason in rejected[:50]:
        print(f"  line {line}: {reason}")
    if len(rejected) > 50:
        print(f"  ... and {len(rejected) - 50} more")
    return 1 if rejected else 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sub.add_parser("init", help="create or upgrade the database and the pseudonymisation key"
                   ).set_defaults(func=cmd_init)
    serve = sub.add_parser("serve", help="run the API (and scheduled checks)")
    serve.add_argument("--host", default=None, help="default MONITOR_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default MONITOR_PORT or 8000")
    serve.set_defaults(func=cmd_serve)
    ingest = sub.add_parser("ingest", help="bulk import a JSONL or Parquet file of events")
    ingest.add_argument("file")
    ingest.add_argument("--kind", choices=["inference", "override"], default="inference")
    ingest.add_argument("--batch-size", type=int, default=1000)
    ingest.set_defaults(func=cmd_ingest)
