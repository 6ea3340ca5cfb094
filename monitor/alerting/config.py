"""The alerting config file (``MONITOR_ALERT_RULES_FILE``, YAML): alert rules, notification
channels, retry policy, rollback policies and the deploy hook, in one file.

Every section is optional. Without a file (or without ``rules:``) the built-in rules of
``monitor.alerting.rules.DEFAULT_RULES`` apply, no notification is sent and no rollback is
recommended. ``alerts/monitor-rules.example.yml`` documents every key.
"""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.alerting.rules import DEFAULT_RULES, SEVERITY_RANK, Rule
from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.vocabulary import PRODUCTION, Severity

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object, *, field: str) -> float:
    """Seconds from ``30``, ``"30s"``, ``"5m"``, ``"2h"`` or ``"1d"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{field} has value {value!r}: not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str) and (match := _DURATION.match(value.strip())):
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        raise ConfigError(f"{field} has value {value!r}: not a duration (30, '30s', '5m', '2h')")
    if seconds < 0:
        raise ConfigError(f"{field} has value {value!r}: must not be negative")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetryPolicy(_Strict):
    """Failed deliveries (notifications and the deploy hook) wait ``initial_backoff_s`` after
    the first failure, doubling up to ``max_backoff_s``; after ``max_attempts`` attempts the
    delivery is marked ``failed`` (the alert and the registry change are kept either way)."""

    max_attempts: int = Field(default=8, ge=1)
    initial_backoff_s: float = 30.0
    max_backoff_s: float = 3600.0
    timeout_s: float = 10.0

    @field_validator("initial_backoff_s", "max_backoff_s", "timeout_s", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> float:
        return parse_duration(value, field="retry")

    def backoff_s(self, attempts: int) -> float:
        """Wait after the ``attempts``-th failed attempt (1-based)."""
        return min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** max(attempts - 1, 0))


class _Channel(_Strict):
    name: str | None = None
    min_severity: Severity = "info"

    def accepts(self, severity: str) -> bool:
        return SEVERITY_RANK.get(severity, 0) >= SEVERITY_RANK[self.min_severity]


class AlertmanagerChannel(_Channel):
    """An Alertmanager; alerts go to its v2 API (``POST {url}/api/v2/alerts``)."""

    kind: Literal["alertmanager"] = "alertmanager"
    url: str

    @property
    def target(self) -> str:
        return self.name or self.url.rstrip("/")


class WebhookChannel(_Channel):
    """A generic JSON webhook: one POST per alert transition (firing, resolved)."""

    kind: Literal["webhook"] = "webhook"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.name or self.url


class EmailChannel(_Channel):
    """Mail through an SMTP server (stdlib ``smtplib``). The password, where one is needed,
    is read from ``password_file`` at send time, so it never sits in the config file."""

    kind: Literal["email"] = "email"
    smtp_host: str
    smtp_port: int = Field(default=25, ge=1, le=65535)
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    starttls: bool = False
    ssl: bool = False
    username: str | None = None
    password_file: Path | None = None

    @property
    def target(self) -> str:
        return self.name or "mailto:" + ",".join(self.to)


Channel = AlertmanagerChannel | WebhookChannel | EmailChannel


class NotificationSettings(_Strict):
    """Where alerts go. ``resend_interval`` is how often a firing alert is re-sent to
    Alertmanager, which expects re-sends: it resolves an alert on its own once the alert's
    ``endsAt`` passes (we send ``endsAt`` = now + 4 x resend_interval while firing)."""

    external_url: str = "http://127.0.0.1:8000"
    resend_interval_s: float = Field(default=300.0, alias="resend_interval")
    alertmanager: list[AlertmanagerChannel] = Field(default_factory=list)
    webhooks: list[WebhookChannel] = Field(default_factory=list)
    email: list[EmailChannel] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @field_validator("resend_interval_s", mode="before")
    @classmethod
    def _resend(cls, value: object) -> float:
        seconds = parse_duration(value, field="notifications.resend_interval")
        if seconds <= 0:
            raise ValueError("must be positive")
        return seconds

    @property
    def channels(self) -> list[Channel]:
        return [*self.alertmanager, *self.webhooks, *self.email]

    def channel(self, kind: str, target: str) -> Channel | None:
        return next((c for c in self.channels if c.kind == kind and c.target == target), None)

    @model_validator(mode="after")
    def _unique_targets(self) -> NotificationSettings:
        seen: set[tuple[str, str]] = set()
        for channel in self.channels:
            key = (channel.kind, channel.target)
            if key in seen:
                raise ValueError(f"two {channel.kind} channels share the target {channel.target!r}"
                                 " (give one a name)")
            seen.add(key)
        return self


class RollbackPolicy(_Strict):
    """When alerts of the version behind ``alias`` match (severity, and category or rule) and
    one of them has been firing for ``firing_windows`` consecutive windows, recommend a
    rollback to ``target`` (``last-clean``: the last version that was live, has a baseline,
    was not rolled back and has no critical alert firing; or a named version).
    ``action: auto`` executes the recommendation at once instead of waiting for a human."""

    name: str
    model: str = "*"
    alias: str = PRODUCTION
    severities: list[Severity] = Field(default_factory=lambda: list[Severity](["critical"]))
    categories: list[str] = Field(default_factory=list)
    rules: list[str] = Field(default_factory=list)
    firing_windows: int = Field(default=2, ge=1)
    target: str = "last-clean"
    action: Literal["recommend", "auto"] = "recommend"

    def applies_to(self, model: str) -> bool:
        return self.model in ("*", model)

    def matches(self, *, rule: str, severity: str, category: str | None) -> bool:
        if severity not in self.severities:
            return False
        if not self.categories and not self.rules:
            return True
        return rule in self.rules or (category is not None and category in self.categories)


class DeployHook(_Strict):
    """The webhook the inference platform listens to; called after every rollback with
    ``{"model", "alias", "from_version", "to_version", "reason", ...}``."""

    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = 10.0


class AlertingConfig(_Strict):
    rules: list[Rule] = Field(default_factory=lambda: list(DEFAULT_RULES))
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    rollback_policies: list[RollbackPolicy] = Field(default_factory=list)
    deploy_hook: DeployHook | None = None
    source: str = "built-in defaults"

    @model_validator(mode="after")
    def _unique_names(self) -> AlertingConfig:
        for kind, names in (("rule", [r.name for r in self.rules]),
                            ("rollback policy", [p.name for p in self.rollback_policies])):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{kind} names must be unique; repeated: {duplicates}")
        return self

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


def _first_error(exc: ValidationError, source: str) -> ConfigError:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" has value {value!r}"
    return ConfigError(f"{source}: {where}{shown}: {first['msg']}")


def parse_config(data: Any, *, source: str = "config") -> AlertingConfig:
    """Validate a parsed YAML document; errors name the key path and the value."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    try:
        return AlertingConfig(**{**data, "source": source})
    except ValidationError as exc:
        raise _first_error(exc, source) from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config_file(path: Path) -> AlertingConfig:
    if not path.exists():
        raise ConfigError(f"MONITOR_ALERT_RULES_FILE has value {str(path)!r}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, source=str(path))


_cache: dict[Path, tuple[int, AlertingConfig]] = {}
_cache_lock = threading.Lock()


def load_config(settings: Settings) -> AlertingConfig:
    """The config named by ``settings.alert_rules_file`` (re-read when the file changes), or
    the built-in defaults when none is set."""
    path = settings.alert_rules_file
    if path is None:
        return AlertingConfig()
    path = Path(path).resolve()
    mtime = path.stat().st_mtime_ns if path.exists() else -1
    with _cache_lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
    config = load_config_file(path)
    with _cache_lock:
        _cache[path] = (mtime, config)
    return config
