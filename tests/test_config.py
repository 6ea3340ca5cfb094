from __future__ import annotations

import json
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


SECRET_URL = "postgresql://monitor:pw-s3cret@db.internal:5432/monitor"
STRONG = "s" * 40


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "API_TOKENS", "BOOTSTRAP_ADMIN_TOKEN", "OPERATORS"):
        monkeypatch.delenv(f"MONITOR_{name}", raising=False)
        monkeypatch.delenv(f"MONITOR_{name}_FILE", raising=False)


def test_secrets_come_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    (tmp_path / "url").write_text(SECRET_URL + "\n")
    (tmp_path / "tokens").write_text(json.dumps({"collector": STRONG}) + "\n")
    (tmp_path / "admin").write_text("a" * 44 + "\n")
    monkeypatch.setenv("MONITOR_DATABASE_URL_FILE", str(tmp_path / "url"))
    monkeypatch.setenv("MONITOR_API_TOKENS_FILE", str(tmp_path / "tokens"))
    monkeypatch.setenv("MONITOR_BOOTSTRAP_ADMIN_TOKEN_FILE", str(tmp_path / "admin"))
    settings = load_settings()
    assert settings.database_url == SECRET_URL.replace("postgresql://", "postgresql+psycopg://")
    assert settings.api_tokens["collector"].get_secret_value() == STRONG
    assert settings.bootstrap_admin_token is not None
    assert settings.bootstrap_admin_token.get_secret_value() == "a" * 44
    assert "a" * 44 not in repr(settings) and STRONG not in repr(settings)


def test_a_secret_and_its_file_together_are_refused(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    (tmp_path / "url").write_text(SECRET_URL)
    monkeypatch.setenv("MONITOR_DATABASE_URL_FILE", str(tmp_path / "url"))
    monkeypatch.setenv("MONITOR_DATABASE_URL", "sqlite:///x.db")
    with pytest.raises(ConfigError, match="MONITOR_DATABASE_URL or MONITOR_DATABASE_URL_FILE"):
        load_settings()


def test_an_unreadable_secret_file_is_named(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("MONITOR_API_TOKENS_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"MONITOR_API_TOKENS_FILE: cannot read .*absent"):
        load_settings()
    (tmp_path / "tokens").write_text(json.dumps({"collector": STRONG})[:-1])  # truncated
    monkeypatch.setenv("MONITOR_API_TOKENS_FILE", str(tmp_path / "tokens"))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "not hold a JSON object" in str(caught.value) and STRONG not in str(caught.value)


def test_a_bad_database_url_is_shown_with_its_password_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear(monkeypatch)
    for url in ("mysql://monitor:pw-s3cret@db/monitor", "mysql://db/m?password=pw-s3cret",
                "oracle://monitor:pw@s3cret@db/monitor"):
        monkeypatch.setenv("MONITOR_DATABASE_URL", url)
        with pytest.raises(ConfigError) as caught:
            load_settings()
        message = str(caught.value)
        assert message.startswith("MONITOR_DATABASE_URL has value") and "***" in message
        assert "s3cret" not in message and "s3cret" not in repr(caught.value.__cause__)


@pytest.mark.parametrize("value", [
    '{"collector": "pw-s3cret"}',                              # too short
    json.dumps({"a": "pw-s3cret" * 4, "b": "pw-s3cret" * 4}),  # shared
    '{"collector": "pw-s3cret"',                               # not JSON
    '{"collector": ["pw-s3cret"]}',                            # not a string
])
def test_bad_api_tokens_are_reported_without_their_value(
    value: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("MONITOR_API_TOKENS", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith("MONITOR_API_TOKENS")
    assert "s3cret" not in str(caught.value) and caught.value.__cause__ is None


def test_weak_legacy_tokens_say_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    monkeypatch.setenv("MONITOR_API_TOKENS", '{"collector": "x"}')
    with pytest.raises(ConfigError, match="'collector' has 1 characters; tokens need at least 32"):
        load_settings()
    monkeypatch.setenv("MONITOR_API_TOKENS", json.dumps({"a": STRONG, "b": STRONG}))
    with pytest.raises(ConfigError, match="'a' and 'b' are the same"):
        load_settings()
    monkeypatch.setenv("MONITOR_API_TOKENS", "{}")
    monkeypatch.setenv("MONITOR_BOOTSTRAP_ADMIN_TOKEN", "short")
    with pytest.raises(ConfigError, match=r"MONITOR_BOOTSTRAP_ADMIN_TOKEN: .*at least 32"):
        load_settings()
