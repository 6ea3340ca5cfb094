"""`monitor check` and `monitor baseline create|list`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import date, datetime

from monitor_client.events import as_utc

from monitor.alerting.engine import on_check_complete
from monitor.checks import CheckOptions, CheckOutcome, run_check
from monitor.checks.baselines import create_baseline
from monitor.config import load_settings
from monitor.detect.result import DetectionResult
from monitor.errors import ValidationError
from monitor.runtime import Runtime
from monitor.store import results
from monitor.store.db import session_scope

BIAS = "SubgroupBias"
# A whole week, as a baseline week is: a rolling 1d window is tested against every baseline
# member, weekend and weekday alike, so the day's case mix alone flags it (README, "The daily
# grid"); one local day is checked against its own day type with --day.
DEFAULT_WINDOW = "7d"
STREAMS = "SequentialEvidence"


def _time(text: str) -> datetime:
    try:
        return as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-10-01T00:00:00Z") from None


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date such as 2026-10-08") from None


def _verdict(result: DetectionResult) -> str:
    status = (result.details or {}).get("status")
    if status in ("failed", "insufficient data"):
        return str(status)
    if not result.drift:
        return "ok"
    new = (result.details or {}).get("new_categories")
    if new:
        return "DRIFT new: " + ", ".join(list(new)[:3])
    return "DRIFT"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.4f}"


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows,
                                                                        strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
              for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_outcome(outcome: CheckOutcome) -> str:
    """The readable summary `monitor check` prints."""
    window = outcome.window
    lines = [
        f"{outcome.model} {outcome.version}: window {window.label} "
        f"[{window.start.isoformat()}, {window.end.isoformat()}), {outcome.n_studies} studies, "
        f"baseline #{outcome.baseline_id}, check run #{outcome.check_run_id}"
        + (" (replaced the earlier run of this window)" if outcome.replaced else ""),
        "",
    ]
    shown = [r for r in outcome.results if r.detector not in (BIAS, "Attribution", STREAMS)
             or (r.detector == BIAS and r.drift)]
    bias = [r for r in outcome.results if r.detector == BIAS]
    rows = [(r.detector, r.feature, _number(r.statistic), _number(r.p_value), _verdict(r))
            for r in shown]
    lines.append(format_table(rows, ("detector", "feature", "statistic", "p", "verdict")))
    if bias:
        flagged = sum(1 for r in bias if r.drift)
        tested = sum(1 for r in bias if r.p_value is not None)
        lines.append(f"{BIAS}: {len(bias)} subgroup comparisons ({tested} tested, the rest "
                     f"too small), {flagged} flagged" + (" (listed above)" if flagged else ""))
    lines.append("")
    if outcome.day is not None:
        escalated = outcome.escalated
        lines.append(f"grid day {outcome.day} against the baseline's {outcome.reference} "
                     f"members: {len(outcome.streams)} streams, "
                     f"{sum(s.level == 'page' for s in escalated)} at page, "
                     f"{sum(s.level == 'warning' for s in escalated)} at warning")
        for state in escalated:
            lines.append(f"  {state.level}: {state.stream}  Z {state.statistic:.2f} over "
                         f"{state.days} day(s) since {state.since} (warning "
                         f"{state.warning_at:.2f}, page {state.page_at:.2f})")
    if outcome.health is None:
        lines.append("health: no data (the window has no studies outside the baseline)")
    else:
        lines.append(f"health: {outcome.health.score:.2f} ({outcome.health.status}, "
                     f"{outcome.health.formula_version})")
    if outcome.attribution:
        basis = outcome.attribution[0].basis
        lines.append(f"attribution ({basis} basis), top 3:")
        for rank, item in enumerate(outcome.attribution[:3], start=1):
            lines.append(f"  {rank}. {item.field}={item.value}  contribution "
                         f"{item.contribution:.3f}, explains {item.explained_share:.0%}, "
                         f"share {item.share_reference:.0%} -> {item.share_current:.0%}")
    else:
        lines.append("attribution: none (no embedding or metadata drift)")
    lines.append(f"report: {outcome.report_path or 'none'}")
    for family, error in outcome.failures.items():
        lines.append(f"failed: {family}: {error}")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    if (args.start is None) != (args.end is None):
        raise ValidationError("give both --from and --to, or neither", field="from")
    if args.day is not None and (args.start is not None or args.now is not None):
        raise ValidationError("give --day, or --from/--to, or --now, not two of them",
                              field="day")
    runtime = Runtime.open(load_settings())
    try:
        outcome = run_check(
            runtime, model=args.model, version=args.version,
            window=None if args.start is not None or args.day is not None else args.window,
            start=args.start, end=args.end, now=args.now, day=args.day,
            options=CheckOptions(seed=args.seed, n_permutations=args.permutations,
                                 device=args.device, report=not args.no_report),
            hooks=[on_check_complete],  # the alert rules are evaluated on the stored results
        )
    finally:
        runtime.close()
    print(format_outcome(outcome))
    return 0


def cmd_baseline_create(args: argparse.Namespace) -> int:
    if args.last is None and (args.start is None or args.end is None):
        raise ValidationError("give --from and --to, or --last N", field="from")
    runtime = Runtime.open(load_settings())
    try:
        info = create_baseline(runtime, model=args.model, version=args.version,
                               start=args.start, end=args.end, last=args.last,
                               max_studies=args.max_studies, created_by=args.actor,
                               seed=args.seed)
    finally:
        runtime.close()
    sampling = (info.summary or {}).get("sampling", {})
    print(f"baseline #{info.id} for {info.model} {info.version}: {info.n_studies} studies "
          f"(of {sampling.get('population', '?')}, stratified by site and scanner) from "
          f"[{info.window_start.isoformat() if info.window_start else '-'}, "
          f"{info.window_end.isoformat() if info.window_end else '-'}); checks of this version "
          "use it from now on")
    return 0


def cmd_baseline_list(args: argparse.Namespace) -> int:
    runtime = Runtime.open(load_settings())
    try:
        with session_scope(runtime.sessions) as session:
            found = results.list_baselines(session, model=args.model, version=args.version)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps([b.to_dict() for b in found], default=str, indent=2))
        return 0
    def span(b: results.BaselineInfo) -> str:
        if b.window_start is None or b.window_end is None:
            return "-"
        return f"{b.window_start:%Y-%m-%d %H:%M} .. {b.window_end:%Y-%m-%d %H:%M}"

    rows = [(str(b.id), b.model, b.version, str(b.n_studies), b.created_at.isoformat(),
             b.created_by or "-", span(b)) for b in found]
    print(format_table(rows, ("id", "model", "version", "studies", "created", "by", "window")))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    check = sub.add_parser("check", help="run every detector over a window and print a summary")
    check.add_argument("--model", required=True, help="the model's name")
    check.add_argument("--version", default=None,
                       help="default: the production alias, else the newest active version")
    check.add_argument("--window", default=DEFAULT_WINDOW,
                       help=f"1d, 7d, 12h, 30m, 2w or last:N, ending at --now (default "
                       f"{DEFAULT_WINDOW}, a whole week like the baseline's: a rolling day is "
                       "flagged for its weekday or weekend case mix alone; use --day to check "
                       "one day as the scheduler does)")
    check.add_argument("--from", dest="start", type=_time, default=None,
                       help="explicit window start (ISO 8601), with --to")
    check.add_argument("--to", dest="end", type=_time, default=None,
                       help="explicit window end (exclusive)")
    check.add_argument("--now", type=_time, default=None,
                       help="where the window ends (default: just after the newest inference)")
    check.add_argument("--day", type=_day, default=None,
                       help="a local date (MONITOR_TIMEZONE): check that day's grid window, "
                       "as the scheduler does, with its sequential evidence")
    check.add_argument("--seed", type=int, default=0,
                       help="seed of the permutation tests and subsampling (default 0)")
    check.add_argument("--permutations", type=int, default=CheckOptions.n_permutations,
                       help="permutations of each permutation test (MMD, classifier, "
                       "numeric and score drift; default "
                       f"{CheckOptions.n_permutations})")
    check.add_argument("--device", default="auto", help="auto, cpu or cuda")
    check.add_argument("--no-report", action="store_true", help="skip the Evidently report")
    check.set_defaults(func=cmd_check)

    baseline = sub.add_parser("baseline", help="create or list baselines")
    actions = baseline.add_subparsers(dest="baseline_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a baseline for a model version")
    create.add_argument("--model", required=True, help="the model's name")
    create.add_argument("--version", default=None,
                        help="default: the production alias, else the newest active version")
    create.add_argument("--from", dest="start", type=_time, default=None,
                        help="start of the reference period (ISO 8601), with --to")
    create.add_argument("--to", dest="end", type=_time, default=None,
                        help="end of the reference period (exclusive)")
    create.add_argument("--last", type=int, default=None, help="the newest N studies")
    create.add_argument("--max-studies", type=int, default=None,
                        help="cap on the sample (default MONITOR_BASELINE_MAX_STUDIES)")
    create.add_argument("--seed", type=int, default=0,
                        help="seed of the stratified sample (default 0)")
    create.add_argument("--actor", default="cli", help="who creates it (audit log)")
    create.set_defaults(func=cmd_baseline_create)
    listing = actions.add_parser("list", help="list baselines, newest first")
    listing.add_argument("--model", default=None, help="only this model's baselines")
    listing.add_argument("--version", default=None, help="only this version's baselines")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=cmd_baseline_list)
