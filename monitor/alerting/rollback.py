"""Rollback policies, and the registry wired to the alerting config.

A rollback policy (``RollbackPolicy`` in the config file) watches the version behind an alias:
when one of its alerts that the policy matches has been firing for the policy's
``firing_windows`` consecutive windows, ``apply_rollback_policies`` recommends rolling the
alias back to the policy's target (``last-clean``: ``monitor.registry.rollback_target``; or
a named version that is a sound target), audited as the policy's, and with ``action: auto``
executes it at once through the registry. A version is recommended once while a
recommendation is pending, and not again for the same firing episode of an alert after a
human rejected it.

The registry takes its deploy hook (``HookSettings``) and what to do when a version stops
being live as arguments; here they come from the alerting config: the config's
``deploy_hook`` and retry policy (``hook_settings``), and the resolution of the version's open
incidents and findings, notified through the config's channels (``incident_resolver``).
``registry_for`` builds the ``Registry`` the API, the CLI and the dashboard use; ``promote``,
``rollback``, ``approve`` and ``deliver_deploy_hooks`` are the registry's, wired to a config.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from monitor import registry
from monitor.alerting.config import AlertingConfig, RollbackPolicy, load_config
from monitor.alerting.incidents import NO_LONGER_LIVE, ROLLED_BACK, resolve_version_incidents
from monitor.registry import (
    AliasMove,
    HookReport,
    HookSettings,
    RecommendationInfo,
    Registry,
    VersionRetired,
)
from monitor.runtime import Runtime
from monitor.store import registry as store
from monitor.store.audit import record_audit
from monitor.store.incidents import AlertInfo
from monitor.vocabulary import PRODUCTION

log = logging.getLogger(__name__)


# --- the registry, wired to the alerting config ----------------------------------------------


def hook_settings(config: AlertingConfig) -> HookSettings:
    """The config's deploy hook (none when it has none), retried as its notifications are."""
    hook, retry = config.deploy_hook, config.notifications.retry
    if hook is None:
        return HookSettings(url=None, timeout_s=retry.timeout_s,
                            max_attempts=retry.max_attempts, backoff_s=retry.backoff_s)
    return HookSettings(url=hook.url, headers=dict(hook.headers), timeout_s=hook.timeout_s,
                        max_attempts=retry.max_attempts, backoff_s=retry.backoff_s)


def incident_resolver(config: AlertingConfig | None = None) -> VersionRetired:
    """A version rolled back or no longer live: its open incidents resolve ("rolled back",
    "no longer live"), notified through ``config``'s channels, and its open findings with
    them."""

    def resolve(session: Session, *, model: str, version: str, rolled_back: bool,
                now: datetime) -> list[int]:
        return resolve_version_incidents(
            session, model=model, version=version,
            reason=ROLLED_BACK if rolled_back else NO_LONGER_LIVE, config=config, now=now)

    return resolve


def wiring(config: AlertingConfig | None, runtime: Runtime | None = None
           ) -> tuple[HookSettings, VersionRetired]:
    """``hook_settings`` and ``incident_resolver`` of ``config`` (None: the config file the
    runtime's settings name; without a runtime, the built-in defaults)."""
    if config is None and runtime is not None:
        config = load_config(runtime.settings)
    return hook_settings(config or AlertingConfig()), incident_resolver(config)


def registry_for(runtime: Runtime, config: AlertingConfig | None = None) -> Registry:
    """The registry with ``config``'s deploy hook and incident resolution (None: the config
    file the runtime's settings name)."""
    hooks, on_retired = wiring(config or load_config(runtime.settings))
    return Registry(runtime, hooks=hooks, on_retired=on_retired)


def promote(session: Session, *, model: str, version: str, actor: str, reason: str | None,
            alias: str = PRODUCTION, force: bool = False, alert_id: int | None = None,
            config: AlertingConfig | None = None, now: datetime | None = None) -> AliasMove:
    """``monitor.registry.promote``; the retired version's incidents resolve, notified
    through ``config``'s channels."""
    return registry.promote(session, model=model, version=version, actor=actor, reason=reason,
                            alias=alias, force=force, alert_id=alert_id,
                            on_retired=incident_resolver(config), now=now)


def rollback(session: Session, *, model: str, actor: str, reason: str | None,
             config: AlertingConfig, to_version: str | None = None, alias: str = PRODUCTION,
             force: bool = False, alert_id: int | None = None, now: datetime | None = None
             ) -> RecommendationInfo:
    """``monitor.registry.rollback`` with ``config``'s deploy hook and incident resolution."""
    hooks, on_retired = wiring(config)
    return registry.rollback(session, model=model, actor=actor, reason=reason, hooks=hooks,
                             on_retired=on_retired, to_version=to_version, alias=alias,
                             force=force, alert_id=alert_id, now=now)


def approve(session: Session, recommendation_id: int, *, actor: str, reason: str | None,
            config: AlertingConfig, force: bool = False, now: datetime | None = None
            ) -> RecommendationInfo:
    """``monitor.registry.approve`` with ``config``'s deploy hook and incident resolution."""
    hooks, on_retired = wiring(config)
    return registry.approve(session, recommendation_id, actor=actor, reason=reason,
                            hooks=hooks, on_retired=on_retired, force=force, now=now)


def deliver_deploy_hooks(runtime: Runtime, *, config: AlertingConfig | None = None,
                         now: datetime | None = None) -> HookReport:
    """``monitor.registry.deliver_deploy_hooks`` with ``config``'s deploy hook (None: the
    config file the runtime's settings name)."""
    config = config or load_config(runtime.settings)
    return registry.deliver_deploy_hooks(runtime, hook_settings(config), now=now)


# --- policies ------------------------------------------------------------------------------


def _policy_alert(session: Session, policy: RollbackPolicy, model: str, version: str
                  ) -> AlertInfo | None:
    """The version's firing alert that the policy matches and that has fired long enough:
    the longest firing (the oldest of those)."""
    matching = [a for a in store.firing_alerts(session, model, version)
                if a.firing_windows >= policy.firing_windows and policy.matches(
                    rule=a.rule, severity=a.severity, category=a.labels.get("category"))]
    return max(matching, key=lambda a: (a.firing_windows, -a.id), default=None)


def _target(session: Session, policy: RollbackPolicy, model: str) -> str | None:
    if policy.target == "last-clean":
        return registry.rollback_target(session, model=model, alias=policy.alias)
    named = store.find_version(session, model, policy.target)
    return None if named is None or registry.rollback_problems(session, named) else named.version


def apply_rollback_policies(session: Session, config: AlertingConfig, *, model: str,
                            now: datetime | None = None) -> list[RecommendationInfo]:
    """Turn sustained matching alerts into rollback recommendations (executed at once for
    ``action: auto``), in the caller's transaction."""
    now = now or datetime.now(UTC)
    made = []
    for policy in config.rollback_policies:
        if not policy.applies_to(model):
            continue
        current = store.alias_version(session, model, policy.alias)
        if current is None:
            continue
        alert = _policy_alert(session, policy, model, current.version)
        if alert is None or store.recommendation_handled(
                session, model=model, alias=policy.alias, from_version=current.version,
                alert_id=alert.id, since=alert.fired_at or alert.started_at):
            continue
        target = _target(session, policy, model)
        if target is None or target == current.version:
            log.warning("policy %s: %s %s should be rolled back (%s) but there is no sound "
                        "target", policy.name, model, current.version, alert.rule)
            continue
        reason = (f"policy {policy.name}: {alert.severity} alert {alert.rule} firing for "
                  f"{alert.firing_windows} consecutive windows: {alert.summary or ''}").strip()
        rec = store.add_recommendation(session, model=model, alias=policy.alias,
                                       from_version=current.version, to_version=target,
                                       policy=policy.name, alert_id=alert.id, reason=reason,
                                       now=now)
        actor = f"policy:{policy.name}"
        record_audit(session, actor=actor, action="recommend_rollback", model=model,
                     model_version=current.version, reason=reason, alert_id=alert.id, now=now,
                     details={"recommendation_id": rec.id, "alias": policy.alias,
                              "to_version": target, "action": policy.action})
        if policy.action == "auto":
            hooks, on_retired = wiring(config)
            rec = registry.execute(session, rec, actor=actor,
                                   reason=f"automatic rollback: {reason}", force=False,
                                   hooks=hooks, on_retired=on_retired, now=now)
        made.append(rec)
    return made
