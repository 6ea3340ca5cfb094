"""Ingestion throughput, side by side in one run.

(a) the in-process collector, (b) HTTP batches of 1,000 events with 512-d embeddings as base64,
(c) the same as JSON float lists, (d) the limit: a bare ``sqlite3`` executemany of the same rows,
prepared beforehand, into the service's own table (created by its migration; the service's
pragmas). Each row prints events/s and its ratio to (d). With ``--postgres URL`` the same on
PostgreSQL, (d) being psycopg's executemany.

    python benchmarks/ingest.py [--events 20000] [--postgres postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from monitor_client.codec import encode_embedding

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, scratch_postgres

from monitor.collect.ingest import _inference_rows
from monitor.collect.inprocess import InProcessCollector
from monitor.config import Settings
from monitor.privacy import Pseudonymiser
from monitor.runtime import Runtime
from monitor.schema import INFERENCES
from monitor.store.db import make_engine, upgrade
from monitor.store.ingest import INFERENCE_COLUMNS, sqlite_text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


KEY = "benchmark-key-0123456789abcdef0123456789"
BATCH = 1_000
DIM = 512


def make_events(n: int, *, as_list: bool, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    events = []
    for i in range(n):
        events.append({
            "event_id": str(uuid.UUID(int=int(rng.integers(2**63)) << 64 | i)),
            "model": "cxr-triage", "model_version": "1.4.0",
            "timestamp": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
            "study_uid": f"1.2.826.0.1.3680043.8.498.{seed}.{i}",
            "scanner": {"manufacturer": "GE Healthcare", "model": "Optima XR240amx",
                        "station": "XR-NORTH-1", "site": "north", "modality": "DX",
                        "body_part": "CHEST", "view": "PA", "kvp": 110.0, "exposure_mas": 2.5,
                        "pixel_spacing_mm": 0.139, "photometric": "MONOCHROME2",
                        "software_version": "DM_Platform 5.2"},
            "patient": {"id": f"MRN{i % 5000:07d}", "sex": "F", "age_years": 54},
            "prediction": {"scores": {"pneumothorax": float(rng.random())}, "positive": True,
                           "threshold": 0.5},
            "embedding": vectors[i].tolist() if as_list else encode_embedding(vectors[i]),
            "latency_ms": 84.0,
        })
    return events


def settings_for(url: str, tmp: Path) -> Settings:
    return Settings(database_url=url, secret_key=KEY, secret_key_file=tmp / "k",  # type: ignore[arg-type]
                    check_interval_s=0)


def fresh_url(base: str | None, tmp: Path, name: str, scratch: ExitStack) -> str:
    """A new SQLite file, or a scratch PostgreSQL database dropped when ``scratch`` closes."""
    if base is None:
        return f"sqlite:///{tmp / (name + '.db')}"
    return scratch.enter_context(scratch_postgres(base, f"bench_ingest_{name}"))


def bench_inprocess(url: str, tmp: Path, events: list[dict]) -> float:
    settings = settings_for(url, tmp)
    upgrade(make_engine(settings.database_url))
    collector = InProcessCollector(Runtime.open(settings))
    start = time.perf_counter()
    for lo in range(0, len(events), BATCH):
        collector.log_inferences(events[lo : lo + BATCH])
    elapsed = time.perf_counter() - start
    collector.close()
    return len(events) / elapsed


def bench_http(url: str, tmp: Path, events: list[dict]) -> float:
    """The API in its own process (uvicorn, one worker), bodies serialised beforehand."""
    settings = settings_for(url, tmp)
    upgrade(make_engine(settings.database_url))
    port = free_port()
    env = {**os.environ, "MONITOR_DATABASE_URL": url, "MONITOR_SECRET_KEY": KEY,
           "MONITOR_CHECK_INTERVAL_S": "0", "MONITOR_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-m", "monitor.cli", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bodies = [json.dumps(events[lo : lo + BATCH]).encode()
              for lo in range(0, len(events), BATCH)]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            for _ in range(200):
                try:
                    client.get("/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            start = time.perf_counter()
            for body in bodies:
                response = client.post("/v1/inferences", content=body,
                                       headers={"content-type": "application/json"})
                response.raise_for_status()
            elapsed = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    return len(events) / elapsed


def limit_rows(events: list[dict], *, sqlite: bool) -> list[tuple]:
    """The rows the service writes, in the driver's form, prepared beforehand (the limit does
    no work)."""
    parsed = INFERENCES.from_python(events)
    now = datetime.now(UTC)
    if sqlite:
        return _inference_rows(parsed, [1] * len(parsed), Pseudonymiser(KEY.encode()),
                               sqlite_text(now), sqlite_text)
    return _inference_rows(parsed, [1] * len(parsed), Pseudonymiser(KEY.encode()), now)


def limit_table(url: str) -> None:
    """The service's own schema (its migration), with the one model version the rows name:
    the limit writes into the very table the service writes into."""
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO model_version (id, model, version, status, created_at, updated_at) "
            "VALUES (1, 'cxr-triage', '1.4.0', 'candidate', '2026-11-01', '2026-11-01')")
    engine.dispose()


LIMIT_SQL = (f"INSERT INTO inference ({', '.join(INFERENCE_COLUMNS)}) "
             f"VALUES ({', '.join(['{}'] * len(INFERENCE_COLUMNS))})")


def bench_limit_sqlite(path: Path, rows: list[tuple]) -> float:
    """A bare sqlite3 connection with the service's pragmas."""
    limit_table(f"sqlite:///{path}")
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    sql = LIMIT_SQL.replace("{}", "?")
    start = time.perf_counter()
    for lo in range(0, len(rows), BATCH):
        connection.executemany(sql, rows[lo : lo + BATCH])
        connection.commit()
    elapsed = time.perf_counter() - start
    connection.close()
    return len(rows) / elapsed


def bench_limit_postgres(url: str, rows: list[tuple]) -> float:
    """A bare psycopg connection."""
    import psycopg

    limit_table(url)
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as connection:
        sql = LIMIT_SQL.replace("{}", "%s")
        start = time.perf_counter()
        with connection.cursor() as cursor:
            for lo in range(0, len(rows), BATCH):
                cursor.executemany(sql, rows[lo : lo + BATCH])
                connection.commit()
        return len(rows) / (time.perf_counter() - start)


def run(backend: str, base: str | None, n: int, repeats: int, tmp: Path
        ) -> list[tuple[str, list[float]]]:
    """Each path ``repeats`` times, interleaved (a, b, c, d, a, b, ...), so that a slow spell
    of a shared machine does not fall on one path only. Every run writes a fresh database."""
    b64 = make_events(n, as_list=False, seed=1)
    lists = make_events(n, as_list=True, seed=2)
    direct = make_events(n, as_list=False, seed=3)
    rows = limit_rows(make_events(n, as_list=False, seed=4), sqlite=base is None)
    paths = (
        ("(a) in-process collector", lambda name: bench_inprocess(url(name), tmp, direct)),
        ("(b) HTTP, 1,000/batch, base64", lambda name: bench_http(url(name), tmp, b64)),
        ("(c) HTTP, 1,000/batch, JSON lists", lambda name: bench_http(url(name), tmp, lists)),
        ("(d) limit: bare executemany",
         lambda name: (bench_limit_sqlite(tmp / f"{name}.db", rows) if base is None
                       else bench_limit_postgres(url(name), rows))),
    )
    rates: dict[str, list[float]] = {label: [] for label, _ in paths}
    with ExitStack() as scratch:
        def url(name: str) -> str:
            return fresh_url(base, tmp, name, scratch)

        for repeat in range(repeats):
            for key, (label, bench) in zip("abcd", paths, strict=True):
                rate = bench(f"{key}{repeat}")
                rates[label].append(rate)
                print(f"[{backend}] run {repeat + 1}/{repeats} {label}: {rate:,.0f} events/s",
                      file=sys.stderr, flush=True)
    return list(rates.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path (median kept)")
    parser.add_argument("--postgres", default=None, help="admin URL of a PostgreSQL server")
    args = parser.parse_args()
    lines = [f"Ingestion, {args.events:,} events of {DIM}-d embeddings, batches of {BATCH:,}, "
             f"median of {args.repeats} interleaved runs; {machine()}", "",
             "| backend | path | events/s | ratio to (d) |", "| --- | --- | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("SQLite", None)] + ([("PostgreSQL", args.postgres)] if args.postgres
                                         else [])
        for backend, base in backends:
            results = [(label, statistics.median(rates))
                       for label, rates in run(backend, base, args.events, args.repeats,
                                               Path(tmp))]
            limit = results[-1][1]
            for label, rate in results:
                lines.append(f"| {backend} | {label} | {rate:,.0f} | {rate / limit:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
