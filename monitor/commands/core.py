"""`monitor init`, `monitor serve`, `monitor ingest`, `monitor rotate-key`, `monitor key`."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from tqdm import tqdm

from monitor.collect.inprocess import InProcessCollector
from monitor.commands.tokens import os_user
from monitor.config import Settings, ensure_secret_key, load_settings
from monitor.errors import BatchValidationError, MonitorError
from monitor.store.db import make_engine, upgrade, verify_schema
from monitor.store.keys import (
    fingerprint,
    finish_rotation,
    key_state,
    read_key_file,
    read_keys,
    short,
    start_rotation,
    verify_keys,
)

log = logging.getLogger("monitor")


def cmd_init(_args: argparse.Namespace) -> int:
    settings = load_settings()
    created = ensure_secret_key(settings)
    if created:
        print(f"created pseudonymisation key {created} (mode 0600): keep an offline copy, "
              "out of the database backups; losing it breaks the link of new events to old "
              "ones (docs/security.md)")
    keys = read_keys(settings)
    engine = make_engine(settings.database_url)
    try:
        before, after = upgrade(engine)
        verify_keys(engine, keys)
    finally:
        engine.dispose()
    where = settings.database_url.split("@")[-1]
    if before == after:
        print(f"database {where} is at schema revision {after}")
    else:
        print(f"database {where}: schema {before or 'empty'} -> {after}")
    print(f"pseudonymisation key fingerprint {short(keys.current_fingerprint)} (recorded in "
          "the database: a different key is refused)")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    settings = load_settings()
    actor = args.actor or os_user()
    engine = make_engine(settings.database_url)
    try:
        verify_schema(engine)
        if args.finish:
            return _finish_rotation(engine, settings, actor)
        started = start_rotation(engine, settings, actor=actor)
    finally:
        engine.dispose()
    print(f"key rotation started by {actor}: new key {short(started.current)}, previous key "
          f"{short(started.previous)}")
    if started.wrote_files:
        print(f"  new key written to {settings.secret_key_file} (mode 0600), the previous key "
              f"kept in {settings.previous_secret_key_file}: back up the new key now")
    print("  restart the API and collectors now: until the rotation finishes, events get "
          "both pseudonyms and keep linking to older events")
    print("  finish with `monitor rotate-key --finish` once the transition is long enough "
          "(docs/security.md), with the API and collectors stopped")
    return 0


def _finish_rotation(engine: Engine, settings: Settings, actor: str) -> int:
    finished = finish_rotation(engine, settings, actor=actor)
    if finished.retired is None and not (finished.inferences or finished.overrides):
        print("no key rotation in progress: nothing to finish")
        return 0
    print(f"key rotation finished by {actor}: {finished.inferences} inferences and "
          f"{finished.overrides} overrides now carry the new key's pseudonyms")
    if finished.retired is not None:
        where = ("MONITOR_PREVIOUS_SECRET_KEY" if settings.previous_secret_key is not None
                 else str(settings.previous_secret_key_file))
        print(f"  the previous key ({short(finished.retired)}) is retired: remove {where} "
              "(it can be deleted) and restart the API and collectors")
    return 0


def cmd_key_fingerprint(args: argparse.Namespace) -> int:
    """A key's fingerprint, and whether this database expects it."""
    settings = load_settings()
    if args.file is not None:
        shown = {str(args.file): fingerprint(read_key_file(Path(args.file)))}
    else:
        keys = read_keys(settings)
        shown = {"current key": keys.current_fingerprint}
        if keys.previous_fingerprint is not None:
            shown["previous key"] = keys.previous_fingerprint
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            state = key_state(connection)
    finally:
        engine.dispose()
    expected: dict[str | None, str] = {state.current: "this database's current key",
                state.previous: "the previous key of the rotation in progress",
                **{retired: "a retired key" for retired in state.retired}}
    for name, found in shown.items():
        print(f"{name}: {found} ({expected.get(found, 'not a key of this database')})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from monitor.server import serve

    settings = load_settings()
    if args.insecure_open:
        settings = settings.model_copy(update={"insecure_open": True})
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
    with its reasons and skipped, never taking its batch down. Returns (new, duplicates,
    rejected): one (line number, reasons joined by "; ") per line not stored, by line, however
    many problems it had. A problem of the whole batch (no line named) rejects its every line."""
    log_batch = collector.log_inferences if kind == "inference" else collector.log_overrides
    new = duplicates = 0
    rejected: dict[int, list[str]] = {}
    batch: list[tuple[int, Any]] = []

    def reject(line: int, reason: str) -> None:
        reasons = rejected.setdefault(line, [])
        if reason not in reasons:
            reasons.append(reason)

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
                reason, index = f"{problem['field']}: {problem['message']}", problem["index"]
                if isinstance(index, int):
                    reject(batch[index][0], reason)
                else:  # the batch as a whole: none of its lines is stored
                    for line, _ in batch:
                        reject(line, reason)
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
                reject(number, f"malformed JSON: {item.msg}")
                continue
            batch.append((number, item))
            if len(batch) >= batch_size:
                flush()
        flush()
    return new, duplicates, [(line, "; ".join(reasons))
                             for line, reasons in sorted(rejected.items())]


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
    print(f"{path}: {new} stored, {duplicates} duplicates skipped, {len(rejected)} "
          f"line{'' if len(rejected) == 1 else 's'} rejected")
    for line, reason in rejected[:50]:
        print(f"  line {line}: {reason}")
    if len(rejected) > 50:
        print(f"  ... and {len(rejected) - 50} more")
    return 1 if rejected else 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sub.add_parser("init", help="create or upgrade the database and the pseudonymisation key"
                   ).set_defaults(func=cmd_init)
    rotate = sub.add_parser("rotate-key", help="start (or --finish) a pseudonymisation key "
                            "rotation (docs/security.md)")
    rotate.add_argument("--finish", action="store_true",
                        help="move the new key's pseudonyms into place and retire the old key")
    rotate.add_argument("--actor", default=None, help="who rotates (audit log; default: the "
                        "OS user)")
    rotate.set_defaults(func=cmd_rotate_key)
    key = sub.add_parser("key", help="the pseudonymisation key")
    key_actions = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    show = key_actions.add_parser("fingerprint", help="a key's fingerprint, and whether this "
                                  "database expects it (check a restored key)")
    show.add_argument("--file", default=None, help="a key file (default: the configured keys)")
    show.set_defaults(func=cmd_key_fingerprint)
    serve = sub.add_parser("serve", help="run the API (and scheduled checks)")
    serve.add_argument("--host", default=None, help="default MONITOR_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default MONITOR_PORT or 8000")
    serve.add_argument("--insecure-open", action="store_true",
                       help="serve a non-loopback address even with no API token (a lab only; "
                       "or MONITOR_INSECURE_OPEN=true)")
    serve.set_defaults(func=cmd_serve)
    ingest = sub.add_parser("ingest", help="bulk import a JSONL or Parquet file of events")
    ingest.add_argument("file", help="a .jsonl file (one event per line) or a .parquet file "
                        "(one event per row)")
    ingest.add_argument("--kind", choices=["inference", "override"], default="inference",
                        help="what the file holds: inference events or radiologist reads "
                        "(default inference)")
    ingest.add_argument("--batch-size", type=int, default=1000,
                        help="events validated and stored together (default 1000); a bad line "
                        "is skipped, never its batch")
    ingest.set_defaults(func=cmd_ingest)
