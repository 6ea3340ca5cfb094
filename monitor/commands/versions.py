"""`monitor versions`: list, register, promote and roll back model versions; approve or
reject rollback recommendations; read the audit log. Changes are audited with ``--actor``
(default: the OS user) and promotions, rollbacks and decisions need ``--reason``."""

from __future__ import annotations

import argparse
from datetime import UTC

from monitor.alerting.rollback import registry_for
from monitor.commands.alerts import default_actor, opened, print_json
from monitor.registry import RecommendationInfo
from monitor.vocabulary import PRODUCTION


def _hook(rec: RecommendationInfo) -> str:
    if rec.hook_status is None:
        return "no deploy hook configured"
    text = f"deploy hook {rec.hook_status} after {rec.hook_attempts} attempt(s)"
    return text + (f" (last error: {rec.hook_error})" if rec.hook_error else "")


def cmd_list(args: argparse.Namespace) -> int:
    with opened() as runtime:
        versions = registry_for(runtime).versions(args.model)
    if args.json:
        print_json(versions)
        return 0
    if not versions:
        print("no model versions")
        return 0
    print(f"{'model':20}  {'version':12}  {'status':11}  {'dim':>5}  {'baseline':8}  aliases")
    for v in versions:
        print(f"{v['model'][:20]:20}  {v['version'][:12]:12}  {v['status']:11}  "
              f"{v['embedding_dim'] or '-':>5}  {'yes' if v['has_baseline'] else 'no':8}  "
              f"{', '.join(v['aliases']) or '-'}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    with opened() as runtime:
        info = registry_for(runtime).register(model=args.model, version=args.version,
                                          actor=args.actor, status=args.status,
                                          embedding_dim=args.embedding_dim, notes=args.notes,
                                          reason=args.reason)
    print(f"registered {info.model} {info.version} ({info.status})")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    with opened() as runtime:
        move = registry_for(runtime).promote(model=args.model, version=args.version,
                                         actor=args.actor, reason=args.reason, alias=args.alias,
                                         force=args.force)
    print(f"{move.model} {move.alias}: {move.from_version or '(none)'} -> {move.to_version}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with opened() as runtime:
        rec = registry_for(runtime).rollback(model=args.model, actor=args.actor, reason=args.reason,
                                         to_version=args.to, alias=args.alias, force=args.force,
                                         alert_id=args.alert_id)
    print(f"{rec.model} {rec.alias}: {rec.from_version} -> {rec.to_version} (rolled back; "
          f"{_hook(rec)})")
    return 1 if rec.hook_status == "failed" else 0


def cmd_recommendations(args: argparse.Namespace) -> int:
    with opened() as runtime:
        recs = registry_for(runtime).recommendations(model=args.model, status=args.status)
    if args.json:
        print_json([r.to_dict() for r in recs])
        return 0
    if not recs:
        print("no rollback recommendations")
        return 0
    for r in recs:
        print(f"{r.id:>4}  {r.status:9}  {r.model} {r.alias}: {r.from_version} -> "
              f"{r.to_version}  [{r.policy}, alert {r.alert_id or '-'}]  "
              f"{r.created_at.astimezone(UTC):%Y-%m-%d %H:%M}")
        print(f"      {r.reason or ''}")
        if r.status != "pending":
            print(f"      {r.status} by {r.decided_by}: {r.decision_reason or ''}; {_hook(r)}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    with opened() as runtime:
        rec = registry_for(runtime).approve(args.recommendation_id, actor=args.actor,
                                        reason=args.reason, force=args.force)
    print(f"approved: {rec.model} {rec.alias}: {rec.from_version} -> {rec.to_version}; "
          f"{_hook(rec)}")
    return 1 if rec.hook_status == "failed" else 0


def cmd_reject(args: argparse.Namespace) -> int:
    with opened() as runtime:
        rec = registry_for(runtime).reject(args.recommendation_id, actor=args.actor,
                                       reason=args.reason)
    print(f"rejected recommendation {rec.id} ({rec.model} {rec.from_version} -> "
          f"{rec.to_version})")
    return 0


def cmd_retry_hook(args: argparse.Namespace) -> int:
    with opened() as runtime:
        rec = registry_for(runtime).retry_hook(args.recommendation_id, actor=args.actor,
                                           reason=args.reason)
    print(f"recommendation {rec.id}: {_hook(rec)}")
    return 0 if rec.hook_status == "sent" else 1


def cmd_audit(args: argparse.Namespace) -> int:
    with opened() as runtime:
        entries = registry_for(runtime).audit(model=args.model, action=args.action,
                                          limit=args.limit)
    if args.json:
        print_json([e.to_dict() for e in entries])
        return 0
    for e in entries:
        alert = f" alert {e.alert_id}" if e.alert_id else ""
        print(f"{e.ts.astimezone(UTC):%Y-%m-%d %H:%M:%S}  {e.actor:16}  {e.action:20}  "
              f"{e.model or ''} {e.model_version or ''}{alert}  {e.reason or ''}")
    return 0


def _actor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", default=default_actor(),
                        help="who makes the change (audit log); default: the OS user")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    versions = sub.add_parser("versions", help="model versions, aliases, rollbacks, audit log"
                              ).add_subparsers(dest="versions_command", required=True)

    listing = versions.add_parser("list", help="versions with status, aliases and baseline")
    listing.add_argument("--model", help="only this model's versions")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=cmd_list)

    register = versions.add_parser("register", help="register a model version")
    register.add_argument("model", help="the model's name")
    register.add_argument("version", help="the version, e.g. 1.4.0")
    register.add_argument("--status", default="candidate", choices=["candidate", "shadow"],
                          help="candidate (default) or shadow (runs beside production, "
                          "unseen); active comes only from a promotion")
    register.add_argument("--embedding-dim", type=int,
                          help="length of its embeddings (default: learnt from its first "
                          "event)")
    register.add_argument("--notes", help="free text kept with the version")
    register.add_argument("--reason", help="why (audit log)")
    _actor(register)
    register.set_defaults(func=cmd_register)

    promote = versions.add_parser("promote", help="point an alias (production) at a version")
    promote.add_argument("model", help="the model's name")
    promote.add_argument("version", help="the version the alias will point at")
    promote.add_argument("--reason", required=True, help="why (audit log)")
    promote.add_argument("--alias", default=PRODUCTION,
                         help="the alias to move (default production)")
    promote.add_argument("--force", action="store_true",
                         help="promote a version that was rolled back for cause")
    _actor(promote)
    promote.set_defaults(func=cmd_promote)

    rollback = versions.add_parser("rollback", help="move an alias back now and call the "
                                   "deploy hook")
    rollback.add_argument("model", help="the model's name")
    rollback.add_argument("--to", help="default: the last version that was live with a "
                          "baseline and no critical alert")
    rollback.add_argument("--reason", required=True, help="why (audit log)")
    rollback.add_argument("--alias", default=PRODUCTION,
                          help="the alias to move back (default production)")
    rollback.add_argument("--alert-id", type=int, help="the alert that caused it")
    rollback.add_argument("--force", action="store_true", help="roll back to a version without "
                          "baseline or one that was rolled back for cause")
    _actor(rollback)
    rollback.set_defaults(func=cmd_rollback)

    recs = versions.add_parser("recommendations", help="rollback recommendations")
    recs.add_argument("--model", help="only this model's recommendations")
    recs.add_argument("--status", choices=["pending", "executed", "rejected"],
                      help="only recommendations in this state (default: all)")
    recs.add_argument("--json", action="store_true", help="print JSON instead of lines")
    recs.set_defaults(func=cmd_recommendations)

    for name, func, text in (("approve", cmd_approve, "approve and execute a recommendation"),
                             ("reject", cmd_reject, "reject a recommendation")):
        decide = versions.add_parser(name, help=text)
        decide.add_argument("recommendation_id", type=int,
                            help="its id (`monitor versions recommendations`)")
        decide.add_argument("--reason", required=True, help="why (audit log)")
        if name == "approve":
            decide.add_argument("--force", action="store_true",
                                help="roll back even to a version without a baseline or one "
                                "that was rolled back for cause")
        _actor(decide)
        decide.set_defaults(func=func)

    retry = versions.add_parser("retry-hook", help="call a failed deploy hook again")
    retry.add_argument("recommendation_id", type=int,
                       help="the executed recommendation whose hook failed")
    retry.add_argument("--reason", help="why (audit log)")
    _actor(retry)
    retry.set_defaults(func=cmd_retry_hook)

    audit = versions.add_parser("audit", help="the audit log, newest first")
    audit.add_argument("--model", help="only this model's entries")
    audit.add_argument("--action", help="only this action (promote, rollback, register, "
                       "baseline_created, acknowledge_alert, ...)")
    audit.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    audit.add_argument("--json", action="store_true", help="print JSON instead of lines")
    audit.set_defaults(func=cmd_audit)
