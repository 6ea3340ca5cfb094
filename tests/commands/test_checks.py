"""`monitor check`: a rolling window is a week unless asked otherwise (a rolling day is
flagged for its weekday or weekend case mix alone), and the README says so."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from monitor.cli import build_parser
from monitor.commands import checks
from monitor.runtime import Runtime

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_window_defaults_to_a_week() -> None:
    args = build_parser().parse_args(["check", "--model", "cxr-triage"])
    assert args.window == checks.DEFAULT_WINDOW == "7d"
    assert build_parser().parse_args(["check", "--model", "m", "--window", "1d"]).window == "1d"


def test_the_default_week_reaches_the_check_and_a_day_or_span_replaces_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(checks, "load_settings", lambda: None)
    monkeypatch.setattr(Runtime, "open", lambda settings: SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(checks, "run_check", lambda runtime, **kwargs: seen.append(kwargs))
    monkeypatch.setattr(checks, "format_outcome", lambda outcome: "")
    for argv in (["--model", "m"], ["--model", "m", "--day", "2026-10-12"],
                 ["--model", "m", "--from", "2026-10-01", "--to", "2026-10-05"]):
        args = build_parser().parse_args(["check", *argv])
        assert checks.cmd_check(args) == 0
    assert [call["window"] for call in seen] == ["7d", None, None]


def test_the_readme_documents_the_default() -> None:
    row = next(line for line in README.read_text(encoding="utf-8").splitlines()
               if line.startswith("| `monitor check "))
    assert "default `7d`" in row
