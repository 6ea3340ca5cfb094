"""The service's settings: one object, read once from ``MONITOR_*`` environment variables
(or a ``.env`` file) at start-up and passed down. Nothing else reads ``os.environ``.

Secrets may come from files (Docker secrets): ``MONITOR_DATABASE_URL_FILE``,
``MONITOR_API_TOKENS_FILE`` and ``MONITOR_BOOTSTRAP_ADMIN_TOKEN_FILE`` name a file holding the
value (``MONITOR_SECRET_KEY_FILE`` already is the key file's path). No error message ever
shows a secret: a bad database URL is shown with its password masked, tokens not at all."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from monitor.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///monitor.db"
GRID_SCHEDULE = "grid"
MIN_API_TOKEN_LENGTH = 32
# Settings that may be read from the file named by MONITOR_<NAME>_FILE.
FILE_SETTINGS = ("database_url", "api_tokens", "bootstrap_admin_token")
# Settings whose values no message shows (database_url is shown with its password masked).
SECRET_SETTINGS = frozenset({"api_tokens", "bootstrap_admin_token", "secret_key",
                             "previous_secret_key"})


def mask_url(url: str) -> str:
    """A database URL with its password (``user:password@``, ``password=``) masked."""
    masked = re.sub(r"^([^:/?#]+://[^:/?#@]*:)(.*)@", r"\1***@", url)
    return re.sub(r"(?i)(password=)[^&]*", r"\1***", masked)


class SecretFilesSource(PydanticBaseSettingsSource):
    """``MONITOR_<NAME>_FILE``: the value of ``MONITOR_<NAME>`` read from a file (a Docker
    secret), trailing newline removed. Giving both the variable and its file is an error."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in FILE_SETTINGS:
            variable = f"MONITOR_{name.upper()}"
            path = os.environ.get(f"{variable}_FILE")
            if not path:
                continue
            if os.environ.get(variable):
                raise ConfigError(f"set {variable} or {variable}_FILE, not both")
            try:
                text = Path(path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{variable}_FILE: cannot read {path}: "
                                  f"{getattr(exc, 'strerror', None) or type(exc).__name__}"
                                  ) from None
            if name == "api_tokens":
                try:
                    values[name] = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{variable}_FILE: {path} does not hold a JSON object "
                                      f"(line {exc.lineno}, column {exc.colno})") from None
            else:
                values[name] = text
        return values


class Settings(BaseSettings):
    """Service configuration. Every field is ``MONITOR_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MONITOR_", env_file=".env", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    # The pseudonymisation key: MONITOR_SECRET_KEY, or a file that `monitor init` creates (0600).
    secret_key: SecretStr | None = None
    secret_key_file: Path = Path(".monitor/secret.key")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # A batch is validated and committed as a whole; these bound one request.
    max_batch_events: int = Field(default=5_000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_embedding_dim: int = Field(default=8_192, ge=1)
    reports_dir: Path = Path(".monitor/reports")
    # How often `monitor serve` wakes up to look for work; 0 switches the scheduler off.
    check_interval_s: int = Field(default=3_600, ge=0)
    # What scheduled checks cover. "grid" (the default): every complete local day
    # [midnight, next midnight) in ``timezone`` after the baseline, each checked once, with
    # the sequential layer deciding health. A window label (1d, 7d, last:500, ...) instead
    # checks a rolling window ending at the newest inference on every wake-up.
    check_window: str = GRID_SCHEDULE
    # The site's time zone (an IANA name such as Europe/Berlin): where the daily grid's
    # midnights fall and which days are weekend days.
    timezone: str = "UTC"
    baseline_max_studies: int = Field(default=5_000, ge=100)
    # Deprecated: API tokens, name -> token, as JSON, imported into the token store at start-up
    # (names in ``operators`` as operators, the others as "ingest,read"). Use `monitor token`.
    api_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    operators: list[str] = Field(default_factory=list)
    # An admin token imported at start-up while the token store holds no active admin token
    # (the compose stack's first start): MONITOR_BOOTSTRAP_ADMIN_TOKEN or its _FILE.
    bootstrap_admin_token: SecretStr | None = None
    alert_rules_file: Path | None = None
    dashboard_port: int = Field(default=8501, ge=1, le=65535)
    # Where people open the dashboard: alert notifications link to its Alerts page.
    dashboard_url: str = Field(default="http://127.0.0.1:8501", pattern=r"^https?://[^\s]+$")
    # Serving a non-loopback address while the API is open (no token in the database) is
    # refused unless this is set (a lab; logged as a warning).
    insecure_open: bool = False
    # Plausible event timestamps: not before this date, not more than this far ahead of the
    # server's clock. The simulator, demo and benchmarks set what they need.
    timestamp_earliest: datetime = datetime(1990, 1, 1, tzinfo=UTC)
    timestamp_max_future_s: int = Field(default=86_400, ge=0)
    # Request bodies: the whole body must arrive within this many seconds, and at most
    # ``max_concurrent_large_bodies`` bodies over ``large_body_bytes`` are read at once
    # (503 with Retry-After beyond that).
    body_read_timeout_s: float = Field(default=30.0, gt=0)
    large_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_concurrent_large_bodies: int = Field(default=4, ge=1)
    # During a key rotation: the previous pseudonymisation key (see `monitor rotate-key`).
    previous_secret_key: SecretStr | None = None
    previous_secret_key_file: Path = Path(".monitor/secret.key.previous")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, SecretFilesSource(settings_cls), dotenv_settings,
                file_secret_settings)

    @field_validator("api_tokens")
    @classmethod
    def _strong_distinct_tokens(cls, tokens: dict[str, SecretStr]) -> dict[str, SecretStr]:
        """Refuse short and shared tokens, naming the token but never showing it."""
        seen: dict[str, str] = {}
        for name, secret in tokens.items():
            value = secret.get_secret_value()
            if len(value) < MIN_API_TOKEN_LENGTH:
                raise ValueError(f"the token named {name[:64]!r} has {len(value)} characters; "
                                 f"tokens need at least {MIN_API_TOKEN_LENGTH} (create them "
                                 "with `monitor token create`)")
            if value in seen:
                raise ValueError(f"the tokens named {seen[value]!r} and {name[:64]!r} are the "
                                 "same; each name needs a token of its own")
            seen[value] = name[:64]
        return tokens

    @field_validator("bootstrap_admin_token")
    @classmethod
    def _strong_bootstrap_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_API_TOKEN_LENGTH:
            raise ValueError(f"the token needs at least {MIN_API_TOKEN_LENGTH} characters")
        return token

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, name: str) -> str:
        try:
            ZoneInfo(name.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone name (such as UTC, Europe/Berlin or "
                             "America/New_York)") from None
        return name.strip()

    @property
    def zone(self) -> ZoneInfo:
        """The site's time zone."""
        return ZoneInfo(self.timezone)

    @property
    def grid_schedule(self) -> bool:
        return self.check_window.strip().lower() == GRID_SCHEDULE

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, url: str) -> str:
        if not url.startswith(("sqlite", "postgresql")):
            raise ValueError(f"database_url {mask_url(url)!r} is neither sqlite:// nor "
                             "postgresql://")
        if url.startswith(("postgresql://", "postgres://")):
            # psycopg 3 is the driver we ship; plain postgresql:// would look for psycopg2.
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning pydantic's error into one that names the variable (and
    shows its value unless it is a secret)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors(include_input=True, include_url=False)[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        name = f"MONITOR_{field.upper()}" if field else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        if field in SECRET_SETTINGS:
            raise ConfigError(f"{name}: {message}") from None
        shown = first.get("input")
        if field == "database_url":
            shown = mask_url(str(shown))
        raise ConfigError(f"{name} has value {shown!r}: {message}") from None
    except SettingsError as exc:  # a variable that should hold JSON does not
        raise ConfigError(f"{_variable_of(str(exc))}: not valid JSON") from None


def _variable_of(message: str) -> str:
    """The MONITOR_ variable a pydantic-settings parse error is about (never its value)."""
    match = re.search(r'field "(\w+)"', message)
    return f"MONITOR_{match.group(1).upper()}" if match else "a MONITOR_ setting"


def read_secret_key(settings: Settings) -> bytes:
    """The pseudonymisation key, from MONITOR_SECRET_KEY or the key file."""
    if settings.secret_key is not None:
        key = settings.secret_key.get_secret_value().encode()
    elif settings.secret_key_file.exists():
        key = settings.secret_key_file.read_bytes().strip()
    else:
        raise ConfigError(
            f"no pseudonymisation key: set MONITOR_SECRET_KEY or run `monitor init` "
            f"to create {settings.secret_key_file}"
        )
    if len(key) < 32:
        raise ConfigError("the pseudonymisation key must be at least 32 characters long")
    return key


def ensure_secret_key(settings: Settings) -> Path | None:
    """Create the key file (mode 0600) unless a key already exists. Returns the path created."""
    if settings.secret_key is not None or settings.secret_key_file.exists():
        return None
    path = settings.secret_key_file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path
