from __future__ import annotations

import stat
from pathlib import Path

import pytest

from monitor.config import Settings, ensure_secret_key, load_settings, read_secret_key
from monitor.errors import ConfigError


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONITOR_PORT", "eighty")
    with pytest.raises(ConfigError, match="MONITOR_PORT has value 'eighty'"):
        load_settings()


def test_postgres_url_uses_psycopg3() -> None:
    settings = Settings(database_url="postgresql://u@127.0.0.1/db")
    assert settings.database_url == "postgresql+psycopg://u@127.0.0.1/db"
    with pytest.raises(ValueError, match="neither sqlite"):
        Settings(database_url="mysql://x")


def test_key_file_is_created_private_once(tmp_path: Path) -> None:
    settings = Settings(secret_key_file=tmp_path / "k" / "secret.key")
    with pytest.raises(ConfigError, match="monitor init"):
        read_secret_key(settings)
    path = ensure_secret_key(settings)
    assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_secret_key(settings)
    assert ensure_secret_key(settings) is None and read_secret_key(settings) == key


def test_short_key_refused() -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        read_secret_key(Settings(secret_key="short"))  # type: ignore[arg-type]
