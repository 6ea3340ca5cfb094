"""The README's Python examples run as written, and the docstring examples as doctests.

The README's client examples use names a reader supplies (their model, the image, its DICOM
header, their events): the tests bind them and point the examples at a server of their own.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from monitor.api import create_app
from monitor.runtime import Runtime
from monitor.store import repo
from monitor.store.db import session_scope
from monitor.store.tokens import create_token
from tests.factories import inference_event, override_event
from tests.servers import running_app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# What the README's examples expect a reader to have: the service's address and a token.
README_URL = "http://127.0.0.1:8000"
DOCTEST_MODULES = ("monitor.detect.mmd", "monitor.detect.metadata")


def readme_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"),
                      flags=re.DOTALL | re.MULTILINE)


def block_with(text: str) -> str:
    found = [block for block in readme_blocks() if text in block]
    assert len(found) == 1, f"one README example should hold {text!r}"
    return found[0]


def printed_matches_comment(printed: str, comment: str) -> bool:
    """A printed value against the README's ``# comment``: numbers to the digits shown."""
    got, shown = printed.split(), comment.split()
    if len(got) != len(shown):
        return printed.strip() == comment.strip()
    for value, expected in zip(got, shown, strict=True):
        try:
            decimals = len(expected.partition(".")[2])
            if round(float(value), decimals) != float(expected):
                return False
        except ValueError:
            if value != expected:
                return False
    return True


def test_every_example_is_tested() -> None:
    assert len(readme_blocks()) == 4, "a new README example needs a test here"


def test_the_detector_example_prints_what_the_readme_says() -> None:
    block = block_with("MMDDrift(")
    expected = [line.partition("#")[2].strip() for line in block.splitlines()
                if line.startswith("print(")]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(block, "README.md", "exec"), {})
    printed = output.getvalue().splitlines()
    assert len(printed) == len(expected)
    for line, comment in zip(printed, expected, strict=True):
        assert printed_matches_comment(line, comment), (line, comment)


@pytest.fixture
def served(runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with session_scope(runtime.sessions) as session:
        token, _ = create_token(session, name="inference-server", role="ingest", actor="test")
    monkeypatch.setenv("MONITOR_TOKEN", token)
    monkeypatch.chdir(tmp_path)
    with running_app(create_app(runtime)) as url:
        yield url


def run_example(block: str, url: str, names: dict[str, Any]) -> dict[str, Any]:
    namespace = dict(names)
    exec(compile(block.replace(README_URL, url), "README.md", "exec"), namespace)
    return namespace


def test_the_client_example_stores_its_event(served: str, runtime: Runtime) -> None:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    scores = {"pneumothorax": 0.81}
    namespace = run_example(block_with("model(image)"), served, {
        "model": lambda image: (scores, np.ones(16, dtype=np.float32)),
        "image": np.zeros((8, 8)), "dataset": dataset})
    monitor = namespace["monitor"]
    assert monitor.flush(timeout_s=30)
    monitor.close()
    assert monitor.stats["sent"] == 1
    with session_scope(runtime.sessions) as session:
        assert repo.count_rows(session)["inferences"] == 1


def test_the_replay_example_sends_dead_letters(served: str, runtime: Runtime) -> None:
    letters = Path(".monitor")
    letters.mkdir()
    event = {**inference_event(), "timestamp": "2026-11-22T10:00:00Z"}
    (letters / "dead-letter.jsonl").write_text(json.dumps(
        {"event_id": event["event_id"], "endpoint": "/v1/inferences", "status": 503,
         "reason": "outage", "dead_lettered_at": "2026-11-22T10:00:01Z", "event": event}) + "\n")
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        run_example(block_with("replay_dead_letters"), served, {"url": served})
    assert "'sent': 1" in output.getvalue()
    assert not (letters / "dead-letter.replay.jsonl").exists()
    with session_scope(runtime.sessions) as session:
        assert repo.count_rows(session)["inferences"] == 1


def test_the_in_process_example_commits(runtime: Runtime, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    settings = runtime.settings
    monkeypatch.setenv("MONITOR_DATABASE_URL", settings.database_url)
    assert settings.secret_key is not None
    monkeypatch.setenv("MONITOR_SECRET_KEY", settings.secret_key.get_secret_value())
    event = inference_event()
    namespace = run_example(block_with("InProcessCollector"), README_URL, {
        "events": [event], "reads": [override_event(event["study_uid"])]})
    namespace["collector"].close()
    with session_scope(runtime.sessions) as session:
        counts = repo.count_rows(session)
    assert (counts["inferences"], counts["overrides"]) == (1, 1)


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name: str) -> None:
    found = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert found.attempted > 0 and found.failed == 0


def test_every_docstring_example_is_run() -> None:
    with_examples = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / "monitor").rglob("*.py") if ">>> " in path.read_text())
    assert with_examples == sorted(DOCTEST_MODULES)

