"""A whole check (every detector family, attribution, Evidently report, storing) over one
large window, side by side with Evidently's DataDriftPreset alone on the same metadata and
score columns.

The simulated deployment (``monitor.simulate``, all default episodes) is ingested into a
fresh SQLite database; the baseline is the production version's clean first week (capped at
``Settings.baseline_max_studies`` = 5,000, stratified by site and scanner); the window is
that version's newest ``--window`` studies. A small check runs first so imports and torch
start-up are not timed.

    python benchmarks/check_window.py [--window 50000] [--dim 512] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")

import evidently
import numpy as np
import sqlalchemy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine

from monitor.checks import CheckOptions, run_check
from monitor.checks.baselines import create_baseline, load_reference
from monitor.checks.reports import CATEGORICAL_COLUMNS, NUMERIC_COLUMNS, run_drift_preset
from monitor.collect.inprocess import InProcessCollector
from monitor.config import Settings
from monitor.detect._torch import resolve_device
from monitor.runtime import Runtime
from monitor.simulate import simulate_deployment
from monitor.store import repo
from monitor.store.db import make_engine, session_scope, upgrade
from monitor.store.models import ModelAlias, ModelVersion
from monitor.store.repo import window_frame

KEY = "benchmark-key-0123456789abcdef0123456789"
RESULTS = Path(__file__).resolve().parent / "results" / "check_window.md"
PRODUCTION_SHARE = 0.75  # of the simulated traffic (monitor.simulate.fleet)


def open_runtime(directory: Path) -> Runtime:
    settings = Settings(database_url=f"sqlite:///{directory / 'bench.db'}",
                        secret_key=KEY,  # type: ignore[arg-type]
                        reports_dir=directory / "reports", check_interval_s=0)
    upgrade(make_engine(settings.database_url))
    return Runtime.open(settings)


def promote(runtime: Runtime, model: str, version: str) -> None:
    now = datetime.now(UTC)
    with session_scope(runtime.sessions) as session:
        version_id = session.scalar(sqlalchemy.select(ModelVersion.id).where(
            ModelVersion.model == model, ModelVersion.version == version))
        session.execute(sqlalchemy.update(ModelVersion).where(ModelVersion.id == version_id)
                        .values(status="active", updated_at=now))
        session.merge(ModelAlias(model=model, alias="production", model_version_id=version_id,
                                 updated_at=now))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=50_000, help="studies in the window")
    parser.add_argument("--dim", type=int, default=512, help="embedding length")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--permutations", type=int, default=CheckOptions.n_permutations)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    days = 30
    # Enough studies that the production version's last `window` come after its first week.
    n_studies = int(args.window / PRODUCTION_SHARE * days / (days - 8))
    directory = Path(tempfile.mkdtemp(prefix="check-window-"))
    runtime = open_runtime(directory)
    clock = time.perf_counter()
    deployment = simulate_deployment(seed=args.seed, n_studies=n_studies, days=days,
                                     embedding_dim=args.dim)
    simulate_s = time.perf_counter() - clock
    clock = time.perf_counter()
    collector = InProcessCollector(runtime)
    for batch in deployment.iter_batches(batch_size=2_000):
        (collector.log_inferences if batch.kind == "inference"
         else collector.log_overrides)(batch.events)
    ingest_s = time.perf_counter() - clock
    model, version = deployment.model, "1.4.0"
    promote(runtime, model, version)
    clock = time.perf_counter()
    baseline = create_baseline(runtime, model=model, version=version,
                               start=deployment.baseline_start, end=deployment.baseline_end)
    baseline_s = time.perf_counter() - clock
    print(f"simulated {n_studies} studies in {simulate_s:.1f}s, ingested in {ingest_s:.1f}s, "
          f"baseline of {baseline.n_studies} in {baseline_s:.1f}s", flush=True)

    options = CheckOptions(seed=args.seed, n_permutations=args.permutations,
                           device=args.device)
    run_check(runtime, model=model, version=version, window="last:2000", options=options)
    clock = time.perf_counter()
    outcome = run_check(runtime, model=model, version=version, window=f"last:{args.window}",
                        options=options)
    check_s = time.perf_counter() - clock
    print(f"check of {outcome.n_studies} studies: {check_s:.1f}s", flush=True)

    with session_scope(runtime.sessions) as session:
        info = repo.get_model_version(session, model, version)
        reference = load_reference(session, baseline, with_embeddings=False).frame
        current, _ = window_frame(session, info.id, end=outcome.window.end, last=args.window)
    clock = time.perf_counter()
    _, columns = run_drift_preset(reference, current)
    evidently_s = time.perf_counter() - clock
    evidently_drift = sorted(c.column for c in columns if c.drift)
    ours = {r.feature for r in outcome.results if r.drift and r.detector in (
        "CategoricalDrift", "NumericDrift", "ScoreDrift")}
    same_columns = set(NUMERIC_COLUMNS) | set(CATEGORICAL_COLUMNS)

    t = outcome.timings
    health = (f"{outcome.health.score:.2f} ({outcome.health_status})" if outcome.health
              else "no data")
    device = str(resolve_device(args.device))
    span = outcome.window.end - outcome.window.start
    lines = [
        "# A whole check over one window",
        "",
        f"`python benchmarks/check_window.py --window {args.window} --dim {args.dim}`",
        "",
        f"Window: the newest {outcome.n_studies:,} studies of {model} {version} "
        f"({span / timedelta(days=1):.1f} days, every default episode), {args.dim}-d "
        f"embeddings; baseline {baseline.n_studies:,} studies (clean first week, stratified); "
        f"device {device}; {args.permutations} permutations; seed {args.seed}. MMD and the "
        f"domain classifier run on seeded subsamples ({options.max_embedding_reference:,} "
        f"reference, {options.max_embedding_current:,} window studies); novelty scores every "
        "study.",
        f"Machine: {machine()}; torch {torch.__version__}, Evidently {evidently.__version__}, "
        f"numpy {np.__version__}.",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {'&nbsp;&nbsp;' if '.' in name else ''}{name} | {seconds:.2f} |"
          for name, seconds in t.items()],
        f"| **whole run_check** (wall) | **{check_s:.2f}** |",
        f"| Evidently DataDriftPreset alone, same {len(same_columns)} columns, no HTML "
        f"| {evidently_s:.2f} |",
        "",
        f"Side by side on the same columns: our metadata + prediction families take "
        f"{t.get('metadata', 0) + t.get('prediction', 0):.2f} s (patient-level permutation "
        f"tests, {args.permutations} permutations each) against Evidently's {evidently_s:.2f} s "
        "(asymptotic tests, or distances above 1,000 reference rows).",
        "",
        f"Outcome: health {health} with {len(outcome.findings)} findings; on the shared "
        f"columns ours flag {', '.join(sorted(ours & same_columns)) or 'none'}; Evidently "
        f"flags {', '.join(evidently_drift) or 'none'}.",
        "",
        f"Set-up (not timed above): simulate {simulate_s:.1f} s, ingest {n_studies:,} studies "
        f"{ingest_s:.1f} s, create the baseline {baseline_s:.1f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    runtime.close()
    for path in sorted(directory.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    directory.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
