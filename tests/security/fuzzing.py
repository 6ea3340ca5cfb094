"""Schemathesis against a real `monitor serve`: start the server on a fresh database, give it
data, fuzz every operation of its OpenAPI schema, and read back what failed.

The server runs as its own process (``monitor init``, ``monitor token create`` for an admin
token, ``monitor serve``), so what is fuzzed is what ships: the CLI's settings, the
error handlers, uvicorn. Schemathesis runs as its CLI (``st run``) with a wall-clock budget;
its JSON report gives the counts, its console output the failing requests, and the server's
log the tracebacks behind every 500.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TEST_SECRET
from tests.factories import inference_event, override_event
from tests.servers import free_port, stop_process

MODEL = "fuzz-model"
VERSION = "1.0.0"
EMBEDDING_DIM = 16
SEED_EVENTS = 80
START_TIMEOUT_S = 60.0
MAX_TIME_S = int(os.environ.get("MONITOR_TEST_FUZZ_SECONDS", "120"))  # per backend
MAX_EXAMPLES = int(os.environ.get("MONITOR_TEST_FUZZ_EXAMPLES", "25"))  # per operation, per pass
SEED = 20261202
WORKERS = 1  # two workers trip a thread-safety bug in hypothesis (ast.parse)
MONITOR = [sys.executable, "-m", "monitor.cli"]
SCHEMATHESIS = [sys.executable, "-m", "schemathesis.cli"]


# --- the server ---------------------------------------------------------------------------

@dataclass
class Served:
    """A running `monitor serve` and how to reach it."""

    url: str
    headers: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60)


def _monitor(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MONITOR, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


def create_admin_token(env: dict[str, str], cwd: Path) -> str:
    """`monitor token create` prints the token alone on the last line of stdout."""
    done = _monitor("token", "create", "--name", "fuzz-admin", "--role", "admin",
                    "--actor", "fuzz-test", env=env, cwd=cwd)
    assert done.returncode == 0, f"monitor token create failed: {done.stderr}"
    return done.stdout.strip().splitlines()[-1].strip()


def server_env(database_url: str, workdir: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")},
        "DO_NOT_TRACK": "1",
        "MONITOR_DATABASE_URL": database_url,
        "MONITOR_SECRET_KEY": TEST_SECRET,
        "MONITOR_SECRET_KEY_FILE": str(workdir / ".monitor" / "secret.key"),
        "MONITOR_REPORTS_DIR": str(workdir / "reports"),
        "MONITOR_CHECK_INTERVAL_S": "0",
    }


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"monitor serve exited with {process.returncode}:\n"
                               f"{log.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"monitor serve did not answer /healthz within {START_TIMEOUT_S:.0f} s:\n"
                       f"{log.read_text(errors='replace')[-4000:]}")


@contextmanager
def monitor_server(database_url: str, workdir: Path) -> Iterator[Served]:
    """`monitor init`, an admin token where the CLI can make one (else the API is open on
    loopback), then `monitor serve` on a free loopback port until the block ends."""
    env = server_env(database_url, workdir)
    done = _monitor("init", env=env, cwd=workdir)
    assert done.returncode == 0, f"monitor init failed: {done.stderr}"
    headers = {"Authorization": f"Bearer {create_admin_token(env, workdir)}"}
    port = free_port()
    log = workdir / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*MONITOR, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, log)
        yield Served(url=url, headers=headers, log=log, process=process)
    finally:
        stop_process(process)


# --- data for the reads ----------------------------------------------------------------------

@dataclass
class Seeded:
    """What the fuzzed reads can find: parameter name -> a value that exists."""

    parameters: dict[str, Any]
    inference: dict[str, Any]
    override: dict[str, Any]


def seed(served: Served) -> Seeded:
    """A registered version, inference events every 3 hours over the last 10 days and
    radiologist reads of half of them, a baseline of the older half and one check run over the
    last 3 days (so a check id and its report exist)."""
    now = datetime.now(UTC)
    events = [inference_event(model=MODEL, model_version=VERSION,
                              timestamp=(now - timedelta(hours=3 * i)).isoformat())
              for i in range(SEED_EVENTS)]
    reads = [override_event(e["study_uid"], model=MODEL, timestamp=e["timestamp"])
             for e in events[::2]]
    with served.client() as client:
        _ok(client.post(f"/v1/models/{MODEL}/versions",
                        json={"version": VERSION, "embedding_dim": EMBEDDING_DIM}))
        _ok(client.post("/v1/inferences", json=events))
        _ok(client.post("/v1/overrides", json=reads))
        _ok(client.post("/v1/baselines", json={
            "model": MODEL, "version": VERSION, "start": (now - timedelta(days=11)).isoformat(),
            "end": (now - timedelta(days=4)).isoformat()}))
        check = _ok(client.post("/v1/checks", json={"model": MODEL, "version": VERSION,
                                                    "window": "3d"}))
        assert check.get("report_path"), f"the seeded check has no report: {check}"
    parameters = {"model": MODEL, "version": VERSION, "check_id": check["id"]}
    example_event = inference_event(model=MODEL, model_version=VERSION,
                                    timestamp=now.isoformat())
    example_read = override_event(example_event["study_uid"], model=MODEL,
                                  timestamp=now.isoformat())
    return Seeded(parameters=parameters, inference=example_event, override=example_read)


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, (
        f"seeding {response.request.method} {response.request.url.path}: "
        f"{response.status_code} {response.text[:500]}")
    return response.json()


# --- the schema --------------------------------------------------------------------------

def fetch_schema(served: Served) -> dict[str, Any]:
    with served.client() as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    return response.json()


def operations(schema: dict[str, Any]) -> list[str]:
    methods = {"get", "post", "put", "patch", "delete"}
    return [f"{method.upper()} {path}" for path, item in schema["paths"].items()
            for method in item if method in methods]


def with_examples(schema: dict[str, Any], seeded: Seeded) -> dict[str, Any]:
    """The served schema with examples that name the seeded data: a parameter called
    ``model``, ``version`` or ``check_id`` gets the value that exists, and the ingestion
    bodies (where the schema describes them) a valid one-event batch. Schemathesis's examples
    and coverage phases start from these, so their variations reach stored rows; the fuzzing
    phase still draws every value from the schema alone."""
    schema = copy.deepcopy(schema)
    bodies = {"/v1/inferences": [seeded.inference], "/v1/overrides": [seeded.override]}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                value = seeded.parameters.get(parameter.get("name"))
                if value is not None and "example" not in parameter \
                        and "examples" not in parameter:
                    parameter["example"] = value
            media = (operation.get("requestBody", {}).get("content", {})
                     .get("application/json"))
            if method == "post" and path in bodies and media is not None \
                    and "example" not in media and "examples" not in media:
                media["example"] = bodies[path]
    return schema


# --- schemathesis --------------------------------------------------------------------------

# Operations that can lock the fuzzer out (revoking its own token, which it can learn from
# GET /v1/tokens): fuzzed in a pass of their own after everything else.
LOCKOUT = ("DELETE /v1/tokens/{name}",)
LOCKOUT_TIME_S = 15


@dataclass
class Failure:
    operation: str
    checks: list[str]
    requests: list[str]


@dataclass
class FuzzRun:
    """One or more `st run` passes against one server, with the server log they produced."""

    backend: str
    operations: list[str]
    reports: list[dict[str, Any]]
    failures: list[Failure]
    server_errors: list[ServerError]
    seconds: float
    console: str
    statuses: list[Counter[int]]  # response codes in the server's access log, per pass

    @property
    def status_classes(self) -> Counter[str]:
        return _classes(sum(self.statuses, Counter()))

    @property
    def cases(self) -> int:
        return sum(int(r["test_cases"]["generated"]) for r in self.reports)

    @property
    def tested(self) -> int:
        return sum(int(r["operations"]["tested"]) for r in self.reports)

    @property
    def reported_failures(self) -> list[Any]:
        return [f for r in self.reports for f in r.get("failures", [])]

    @property
    def errors(self) -> list[Any]:
        return [e for r in self.reports for e in r.get("errors", [])]

    def summary(self) -> str:
        lines = [
            f"schemathesis on {self.backend}: {self.cases} cases over {self.tested} of "
            f"{len(self.operations)} operations in {self.seconds:.0f} s; "
            f"{len(self.failures)} operations with server errors, "
            f"{len(self.server_errors)} distinct tracebacks in the server log, "
            f"{len(self.errors)} errors",
            "responses: " + ", ".join(f"{k}: {v}" for k, v in
                                      sorted(sum(self.statuses, Counter()).items())),
        ]
        for failure in self.failures:
            lines.append(f"  {failure.operation}: {', '.join(failure.checks)}")
            lines.extend(f"    {request}" for request in failure.requests)
        for error in self.server_errors:
            lines.append(f"  server log x{error.count}: {error.exception} at {error.where}")
        for error in self.errors:
            lines.append(f"  error: {json.dumps(error)[:300]}")
        return "\n".join(lines)


def st_command(schema_file: Path, url: str, headers: dict[str, str], report_file: Path,
               *, max_time_s: int, names: list[str], include: bool) -> list[str]:
    command = [
        *SCHEMATHESIS, "run", str(schema_file), "--url", url,
        "--checks", "not_a_server_error",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(MAX_EXAMPLES),
        "--max-time", str(max_time_s),
        "--seed", str(SEED), "--generation-deterministic",
        "--workers", str(WORKERS),
        "--continue-on-failure",
        "--suppress-health-check", "all",
        "--request-timeout", "60",
        "--no-color",
        "--report", "json", "--report-dir", str(report_file.parent),
        "--report-json-path", str(report_file),
    ]
    for name in names:
        command += ["--include-name" if include else "--exclude-name", name]
    for name, value in headers.items():
        command += ["--header", f"{name}: {value}"]
    return command


def run_schemathesis(served: Served, schema: dict[str, Any], workdir: Path, backend: str
                     ) -> FuzzRun:
    """Every operation but the lockout ones for ``MAX_TIME_S``, then those for a short pass."""
    schema_file = workdir / "openapi.json"
    schema_file.write_text(json.dumps(schema))
    all_operations = operations(schema)
    lockout = [name for name in LOCKOUT if name in all_operations]
    passes = [(MAX_TIME_S, lockout, False)]
    if lockout:
        passes.append((LOCKOUT_TIME_S, lockout, True))
    log_offset = started_at = served.log.stat().st_size
    started = time.monotonic()
    reports, consoles, statuses = [], [], []
    for number, (max_time_s, names, include) in enumerate(passes):
        report_file = workdir / "schemathesis" / f"report-{number}.json"
        report_file.parent.mkdir(exist_ok=True)
        command = st_command(schema_file, served.url, served.headers, report_file,
                             max_time_s=max_time_s, names=names, include=include)
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True,
                              check=False, timeout=max_time_s + 600,
                              env={**os.environ, "NO_COLOR": "1"})
        console = done.stdout + done.stderr
        assert report_file.exists(), f"st run wrote no report (exit {done.returncode}):\n" \
            f"{console[-5000:]}"
        reports.append(json.loads(report_file.read_text()))
        consoles.append(console)
        pass_log = served.log.read_bytes()[log_offset:]
        statuses.append(response_statuses(pass_log.decode(errors="replace")))
        log_offset += len(pass_log)
    seconds = time.monotonic() - started
    log = served.log.read_bytes()[started_at:].decode(errors="replace")
    console = "\n".join(consoles)
    return FuzzRun(backend=backend, operations=all_operations, reports=reports,
                   failures=console_failures(console), server_errors=server_errors(log),
                   seconds=seconds, console=console, statuses=statuses)


SECTION = re.compile(r"^_{3,} (.+?) _{3,}$")


def console_failures(console: str) -> list[Failure]:
    """The FAILURES section of `st run`'s output: per operation, the checks that failed and
    the curl command that reproduces each."""
    failures: list[Failure] = []
    in_failures = False
    current: Failure | None = None
    for line in console.splitlines():
        text = line.strip()
        if text.startswith("====="):  # a section: FAILURES, ERRORS, WARNINGS, SUMMARY
            in_failures = " FAILURES " in text
            current = None
            continue
        header = SECTION.match(text)
        if not in_failures:
            continue
        if header:
            current = Failure(operation=header.group(1).strip(), checks=[], requests=[])
            failures.append(current)
        elif current is not None:
            if text.startswith("- ") and text[2:] not in current.checks:
                current.checks.append(text[2:])
            elif text.startswith("curl "):
                current.requests.append(text)
    return failures


@dataclass
class ServerError:
    exception: str
    where: str
    count: int


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|(DEBUG|INFO|WARNING|ERROR|CRITICAL):)")
FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)')
ACCESS = re.compile(r'^INFO: +\S+ - "[A-Z]+ [^"]*" (?P<status>\d{3})', re.MULTILINE)
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
MARKERS = ("unhandled error", "Exception in ASGI application")


def server_errors(log: str) -> list[ServerError]:
    """Distinct tracebacks in the server's log: the exception (its last line) and the innermost
    frame in the service's own code. The error handler logs an error and uvicorn then logs it
    again ("Exception in ASGI application"): per kind, the larger of the two counts."""
    counts: dict[str, Counter[tuple[str, str]]] = {marker: Counter() for marker in MARKERS}
    marker: str | None = None
    block: list[str] = []
    for line in [*log.splitlines(), "ERROR: end of log"]:
        if LOG_LINE.match(line):
            if marker is not None and block:
                counts[marker][_traceback_key(block)] += 1
            marker = next((m for m in MARKERS if m in line), None)
            block = []
        elif marker is not None:
            block.append(line)
    keys = set().union(*counts.values())
    return [ServerError(exception=e, where=w, count=max(c[(e, w)] for c in counts.values()))
            for e, w in sorted(keys)]


def _traceback_key(block: list[str]) -> tuple[str, str]:
    raised = [line for line in block if EXCEPTION_LINE.match(line)]
    last = raised[-1].strip() if raised else next(
        (line.strip() for line in reversed(block) if line.strip()), "?")
    own = [m for m in (FRAME.search(line) for line in block)
           if m and "/monitor/" in m["file"] and "site-packages" not in m["file"]]
    where = "?"
    if own:
        frame = own[-1]
        where = f"{frame['file'].split('/monitor/', 1)[1]}:{frame['line']} in {frame['function']}"
        where = "monitor/" + where
    return last[:300], where


def response_statuses(log: str) -> Counter[int]:
    """Response codes in the server's access log."""
    return Counter(int(m["status"]) for m in ACCESS.finditer(log))


def _classes(codes: Counter[int]) -> Counter[str]:
    classes: Counter[str] = Counter()
    for code, count in codes.items():
        classes[f"{code // 100}xx"] += count
    return classes


# --- findings -----------------------------------------------------------------------------

def findings_markdown(run: FuzzRun, commit: str) -> str:
    lines = [
        f"## {run.backend}",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}",
        f"- {run.cases} cases over {run.tested} of {len(run.operations)} operations in "
        f"{run.seconds:.0f} s (budget {MAX_TIME_S} s, {MAX_EXAMPLES} examples per operation "
        f"per pass, seed {SEED}, deterministic)",
        "- responses in the server log: "
        + (", ".join(f"{k} {v}" for k, v in sorted(run.status_classes.items())) or "none")
        + " (" + ", ".join(f"{k}: {v}" for k, v in sorted(sum(run.statuses, Counter()).items()))
        + ")",
        f"- operations with server errors: {len(run.failures)}; distinct tracebacks: "
        f"{len(run.server_errors)}; schemathesis errors: {len(run.errors)}",
        "",
    ]
    if run.failures:
        lines += ["| operation | failing request (shrunk) |", "|---|---|"]
        for failure in run.failures:
            for request in failure.requests or ["(no request shown)"]:
                lines.append(f"| {failure.operation} | `{request.replace('|', '%7C')}` |")
        lines.append("")
    if run.server_errors:
        lines += ["| count | exception | innermost frame in monitor/ |", "|---|---|---|"]
        for error in run.server_errors:
            text = error.exception.replace("|", "\\|")
            lines.append(f"| {error.count} | `{text}` | {error.where} |")
        lines.append("")
    for error in run.errors:
        lines.append(f"- error: {json.dumps(error)[:500]}")
    return "\n".join(lines)


def save_findings(run: FuzzRun) -> None:
    """With ``MONITOR_TEST_FUZZ_FINDINGS`` set to a folder, write this run's findings there
    (one markdown file per backend) with the full console output beside it."""
    folder = os.environ.get("MONITOR_TEST_FUZZ_FINDINGS")
    if not folder:
        return
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    git = shutil.which("git")
    commit = "?"
    if git:
        done = subprocess.run([git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False, cwd=Path(__file__).parent)
        commit = done.stdout.strip() or "?"
    (target / f"{run.backend}.md").write_text(findings_markdown(run, commit) + "\n")
    (target / f"{run.backend}.console.txt").write_text(run.console)
