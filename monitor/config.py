"""The service's settings: one object, read once from ``MONITOR_*`` environment variables
(or a ``.env`` file) at start-up and passed down. Nothing else reads ``os.environ``."""

from __future__ import annotations

import os
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from monitor.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///monitor.db"


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
    # Scheduled checks run by `monitor serve`; 0 switches the scheduler off.
    check_interval_s: int = Field(default=3_600, ge=0)
    # The window scheduled checks cover (1d, 7d, last:500, ...). 7 days by default: a 1-day
    # window against a baseline of whole weeks flags the weekday/weekend case mix as drift.
    check_window: str = "7d"
    baseline_max_studies: int = Field(default=5_000, ge=100)
    # API tokens, name -> token, as JSON: {"alice": "s3cret"}. Empty: the API is open.
    api_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    # Names (keys of api_tokens) allowed to approve rollbacks, promote, acknowledge.
    operators: list[str] = Field(default_factory=list)
    alert_rules_file: Path | None = None
    dashboard_port: int = Field(default=8501, ge=1, le=65535)
    # Binding a non-loopback address with no tokens is refused unless this is set (a lab).
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

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, url: str) -> str:
        if not url.startswith(("sqlite", "postgresql")):
            raise ValueError(f"database_url {url!r} is neither sqlite:// nor postgresql://")
        if url.startswith(("postgresql://", "postgres://")):
            # psycopg 3 is the driver we ship; plain postgresql:// would look for psycopg2.
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return url


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning pydantic's error into one that names the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "MONITOR_" + str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise ConfigError(f"{name} has value {first.get('input')!r}: {first['msg']}") from exc


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
