"""Schemathesis over every operation of the OpenAPI schema, against a real `monitor serve` on
a fresh SQLite file and on a fresh PostgreSQL database: no input gives a server error.

Bounded by a wall-clock budget per backend (``MONITOR_TEST_FUZZ_SECONDS``, 120 by default),
with a fixed seed in schemathesis's deterministic mode. ``MONITOR_TEST_FUZZ_FINDINGS=<folder>``
also writes the findings (failing requests, server tracebacks) there as markdown.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import in_ci
from tests.security.fuzzing import (
    LOCKOUT_TIME_S,
    MAX_TIME_S,
    fetch_schema,
    monitor_server,
    run_schemathesis,
    save_findings,
    seed,
    with_examples,
)

pytestmark = [pytest.mark.server, pytest.mark.timeout(MAX_TIME_S + LOCKOUT_TIME_S + 900)]

INGESTION = ("POST /v1/inferences", "POST /v1/overrides")


def require_schemathesis() -> None:
    """Installed with the dev extras; locally a missing one skips, under CI it fails."""
    if importlib.util.find_spec("schemathesis") is not None:
        return
    if in_ci():
        pytest.fail("schemathesis is required under CI=true (pip install -e '.[dev]')")
    pytest.skip("schemathesis is not installed")


def test_no_input_gives_a_server_error(database_url: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    require_schemathesis()
    backend = database_url.split(":", 1)[0].split("+", 1)[0]
    with monitor_server(database_url, tmp_path) as served:
        seeded = seed(served)
        schema = fetch_schema(served)
        run = run_schemathesis(served, with_examples(schema, seeded), tmp_path, backend)
    save_findings(run)
    with capsys.disabled():  # the figures belong in the CI log whether or not the test passes
        print(f"\n{run.summary()}")

    assert run.tested == len(run.operations), f"not every operation was fuzzed:\n{run.console}"
    assert run.cases >= 20 * len(run.operations), run.summary()
    main_pass = run.statuses[0]
    assert sum(n for code, n in main_pass.items() if code < 300) > 0, run.summary()
    # the fuzzer's admin token held for the whole main pass
    assert main_pass[401] == main_pass[403] == 0, run.summary()
    assert not run.errors, run.summary()
    assert not run.reported_failures, run.summary()
    assert not run.server_errors, run.summary()
    assert run.status_classes["5xx"] == 0, run.summary()
    paths = schema["paths"]
    undescribed = [name for name in INGESTION
                   if "requestBody" not in paths[name.split(" ", 1)[1]]["post"]]
    assert not undescribed, f"bodies not in the OpenAPI schema, so not fuzzed: {undescribed}"
