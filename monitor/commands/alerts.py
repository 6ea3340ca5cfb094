"""`monitor alerts`: list, show, acknowledge and silence alerts (findings); deliver due
notifications; re-evaluate a stored check run; show the effective rules.
`monitor incidents`: list and show incidents (the findings of one version that share a
cause), accept one as a validated change."""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

from monitor.alerting import engine
from monitor.alerting.config import load_config, parse_duration
from monitor.alerting.incidents import accept_incident
from monitor.alerting.notify import deliver_pending
from monitor.config import load_settings
from monitor.errors import ValidationError
from monitor.runtime import Runtime
from monitor.store.db import session_scope
from monitor.store.incidents import get_incident, list_incidents


@contextmanager
def opened() -> Iterator[Runtime]:
    runtime = Runtime.open(load_settings())
    try:
        yield runtime
    finally:
        runtime.close()


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def cmd_list(args: argparse.Namespace) -> int:
    with opened() as runtime, session_scope(runtime.sessions) as session:
        alerts = engine.list_alerts(session, state=None if args.state == "all" else args.state,
                                    model=args.model, version=args.version,
                                    severity=args.severity, limit=args.limit)
    if args.json:
        print_json([a.to_dict() for a in alerts])
        return 0
    if not alerts:
        print("no alerts")
        return 0
    print(f"{'id':>5}  {'state':8}  {'severity':8}  {'since':16}  {'ack':10}  summary")
    for a in alerts:
        flags = "" if a.silenced_until is None or a.silenced_until <= datetime.now(UTC) else (
            f" [silenced until {_when(a.silenced_until)}]")
        print(f"{a.id:>5}  {a.state:8}  {a.severity:8}  {_when(a.started_at):16}  "
              f"{(a.acknowledged_by or '-')[:10]:10}  {a.summary or a.rule}{flags}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with opened() as runtime, session_scope(runtime.sessions) as session:
        print_json(engine.get_alert(session, args.alert_id).to_dict())
    return 0


def cmd_ack(args: argparse.Namespace) -> int:
    with opened() as runtime, session_scope(runtime.sessions) as session:
        alert = engine.acknowledge(session, args.alert_id, actor=args.actor, reason=args.reason)
    print(f"alert {alert.id} acknowledged by {alert.acknowledged_by}")
    return 0


def cmd_silence(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    if (args.until is None) == (args.duration is None):
        raise ValidationError("give exactly one of --for and --until", field="until")
    if args.until is not None:
        try:
            until = datetime.fromisoformat(args.until)
        except ValueError:
            raise ValidationError(f"--until has value {args.until!r}: not an ISO time",
                                  field="until") from None
    else:
        until = now + timedelta(seconds=parse_duration(args.duration, field="--for"))
    with opened() as runtime, session_scope(runtime.sessions) as session:
        alert = engine.silence(session, args.alert_id, actor=args.actor, until=until,
                               reason=args.reason, now=now)
    print(f"alert {alert.id} silenced until {_when(alert.silenced_until)} UTC")
    return 0


def cmd_deliver(_args: argparse.Namespace) -> int:
    with opened() as runtime:
        report = engine.deliver_due(runtime)
    d, h = report.delivery, report.hooks
    print(f"re-armed {report.resent} Alertmanager re-sends; notifications: {d.sent} sent, "
          f"{d.retrying} to retry, {d.failed} failed, {d.skipped} silenced; deploy hooks: "
          f"{h.sent} sent, {h.retrying} to retry, {h.failed} failed")
    return 1 if d.failed or h.failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    with opened() as runtime:
        report = engine.process_check_run(runtime, args.check_run_id)
    for t in report.transitions:
        print(f"alert {t.alert_id} {t.rule} {t.labels.get('feature', '')}: "
              f"{t.before or 'new'} -> {t.after}")
    for rec in report.recommendations:
        print(f"rollback recommendation {rec.id}: {rec.model} {rec.from_version} -> "
              f"{rec.to_version} ({rec.status})")
    print(f"{len(report.firing)} firing, {report.notifications_queued} notifications queued")
    return 0


def cmd_rules(_args: argparse.Namespace) -> int:
    config = load_config(load_settings())
    print(f"# from {config.source}")
    for rule in config.rules:
        what = rule.metric or ",".join(rule.detector or rule.family)
        print(f"{rule.name}: {what} {rule.feature or ''} when {rule.condition} "
              f"for {rule.for_windows} window(s) -> {rule.severity} ({rule.category_label})")
    channels = config.notifications.channels
    print(f"# {len(channels)} notification channel(s): "
          + ", ".join(f"{c.kind} {c.target}" for c in channels))
    for policy in config.rollback_policies:
        print(f"# rollback policy {policy.name}: model {policy.model}, {policy.action}")
    return 0


def _since(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def cmd_incidents_list(args: argparse.Namespace) -> int:
    with opened() as runtime, session_scope(runtime.sessions) as session:
        found = list_incidents(session, model=args.model, version=args.version,
                               state=None if args.state == "all" else args.state,
                               severity=args.severity, limit=args.limit)
    if args.json:
        print_json([i.to_dict() for i in found])
        return 0
    if not found:
        print("no incidents")
        return 0
    print(f"{'id':>5}  {'state':8}  {'severity':8}  {'version':16}  {'since':10}  summary")
    for i in found:
        since = i.first_evidence_day.isoformat() if i.first_evidence_day else "-"
        print(f"{i.id:>5}  {i.state:8}  {i.severity:8}  {i.model_version[:16]:16}  "
              f"{since:10}  {i.summary or i.cause_label}")
    return 0


def cmd_incidents_show(args: argparse.Namespace) -> int:
    with opened() as runtime, session_scope(runtime.sessions) as session:
        print_json(get_incident(session, args.incident_id).to_dict())
    return 0


def cmd_incidents_accept(args: argparse.Namespace) -> int:
    with opened() as runtime:
        config = load_config(runtime.settings)
        with session_scope(runtime.sessions) as session:
            incident = accept_incident(session, args.incident_id, actor=args.actor,
                                       since=args.since, reason=args.reason, config=config,
                                       zone=runtime.settings.zone,
                                       max_studies=runtime.settings.baseline_max_studies)
        deliver_pending(runtime, config=config)
    print(f"incident {incident.id} ({incident.cause_label}) accepted by {incident.accepted_by} "
          f"as a validated change from {args.since.isoformat()}: the stratum is re-baselined")
    return 0


def _listing_arguments(parser: argparse.ArgumentParser, *, states: list[str],
                       severities: list[str]) -> None:
    """The filters both listings take; the first state is the default."""
    parser.add_argument("--state", default=states[0], choices=states,
                        help=f"only this state (default {states[0]})")
    parser.add_argument("--model", help="only this model")
    parser.add_argument("--version", help="only this model version")
    parser.add_argument("--severity", choices=severities,
                        help="only this severity (default: all)")
    parser.add_argument("--limit", type=int, default=200, help="at most this many (default 200)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_incident_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    incidents = sub.add_parser("incidents", help="list and show incidents; accept one as a "
                               "validated change").add_subparsers(dest="incidents_command",
                                                                  required=True)
    listing = incidents.add_parser("list", help="incidents, most severe and oldest first")
    _listing_arguments(listing, states=["open", "resolved", "accepted", "all"],
                       severities=["warning", "critical"])
    listing.set_defaults(func=cmd_incidents_list)

    show = incidents.add_parser("show", help="one incident with its findings (JSON)")
    show.add_argument("incident_id", type=int, help="its id (`monitor incidents list`)")
    show.set_defaults(func=cmd_incidents_show)

    accept = incidents.add_parser(
        "accept", help="accept an incident whose cause is a station, scanner model, software "
        "version, site or vendor as a validated change: its studies from --since replace the "
        "stratum's in a new baseline (audited)")
    accept.add_argument("incident_id", type=int, help="its id (`monitor incidents list`)")
    accept.add_argument("--since", type=_since, required=True,
                        help="first day of the validated change (YYYY-MM-DD, site time zone)")
    accept.add_argument("--reason", required=True, help="why (audit log)")
    accept.add_argument("--actor", default=default_actor(), help="default: the OS user")
    accept.set_defaults(func=cmd_incidents_accept)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    add_incident_commands(sub)
    alerts = sub.add_parser("alerts", help="list, acknowledge and silence alerts; deliver "
                            "notifications").add_subparsers(dest="alerts_command", required=True)

    listing = alerts.add_parser("list", help="alerts, most recently updated first")
    _listing_arguments(listing, states=["active", "pending", "firing", "resolved", "all"],
                       severities=["info", "warning", "critical"])
    listing.set_defaults(func=cmd_list)

    show = alerts.add_parser("show", help="one alert with its notifications (JSON)")
    show.add_argument("alert_id", type=int, help="its id (`monitor alerts list`)")
    show.set_defaults(func=cmd_show)

    ack = alerts.add_parser("ack", help="acknowledge an alert (audited)")
    ack.add_argument("alert_id", type=int, help="its id (`monitor alerts list`)")
    ack.add_argument("--reason", help="why (audit log)")
    ack.add_argument("--actor", default=default_actor(), help="default: the OS user")
    ack.set_defaults(func=cmd_ack)

    silence = alerts.add_parser("silence", help="no notifications until a time (audited)")
    silence.add_argument("alert_id", type=int, help="its id (`monitor alerts list`)")
    silence.add_argument("--for", dest="duration", help="30m, 2h, 1d")
    silence.add_argument("--until", help="ISO time, e.g. 2026-11-23T08:00:00+00:00")
    silence.add_argument("--reason", required=True, help="why (audit log)")
    silence.add_argument("--actor", default=default_actor(), help="default: the OS user")
    silence.set_defaults(func=cmd_silence)

    alerts.add_parser("deliver", help="send due notifications and deploy hooks, re-send "
                      "firing alerts to Alertmanager (run from cron without `monitor serve`)"
                      ).set_defaults(func=cmd_deliver)

    evaluate = alerts.add_parser("evaluate", help="evaluate the rules on a stored check run")
    evaluate.add_argument("check_run_id", type=int,
                          help="the check run's id (`monitor check` prints it)")
    evaluate.set_defaults(func=cmd_evaluate)

    alerts.add_parser("rules", help="validate the config file and print the effective rules"
                      ).set_defaults(func=cmd_rules)
