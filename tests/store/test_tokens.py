"""The token store: creation, lookup by prefix and digest, revocation, audit, the verifier's
cache, the start-up imports (bootstrap admin, legacy MONITOR_API_TOKENS) and `monitor token`."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from monitor import registry
from monitor.cli import main
from monitor.errors import ConfigError, ConflictError, NotFoundError, ValidationError
from monitor.runtime import Runtime
from monitor.store import tokens
from monitor.store.db import session_scope
from monitor.store.models import ApiToken, AuditEntry
from tests.conftest import open_runtime

STRONG = "legacy-token-" + "x" * 40


def create(runtime: Runtime, name: str, role: str) -> str:
    with session_scope(runtime.sessions) as session:
        token, _ = tokens.create_token(session, name=name, role=role, actor="tester")
    return token


def test_created_token_is_random_and_stored_as_digest_only(runtime: Runtime) -> None:
    token = create(runtime, "ci-ingest", "ingest")
    other = create(runtime, "ci-read", "read")
    assert token.startswith("mtk_") and len(token) >= 4 + 43 and token != other
    with session_scope(runtime.sessions) as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == "ci-ingest"))
        assert row is not None
        assert row.digest == hashlib.sha256(token.encode()).hexdigest()
        assert row.prefix == token[:tokens.PREFIX_LENGTH] and row.created_by == "tester"
        stored = [str(v) for v in vars(row).values()]
        assert token not in stored
        principal = tokens.find_principal(session, token)
        assert principal == tokens.Principal("ci-ingest", frozenset({"ingest"}))
        assert tokens.find_principal(session, token + "x") is None
        assert tokens.find_principal(session, token[:-1] + "A" if token[-1] != "A"
                                     else token[:-1] + "B") is None
        assert tokens.find_principal(session, "") is None


def test_roles_grant_what_the_role_model_says() -> None:
    assert tokens.grants("admin") == frozenset(tokens.ROLES)
    assert tokens.grants("operator") == {"operator", "read"}
    assert tokens.grants("read") == {"read"}
    assert tokens.grants("ingest") == {"ingest"}
    assert tokens.grants("ingest,read") == {"ingest", "read"}
    assert tokens.parse_role("read, ingest") == "ingest,read"
    for bad in ("root", "", "read,", "operator,superuser"):
        with pytest.raises(ValidationError) as caught:
            tokens.parse_role(bad)
        assert caught.value.field == "role"


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "tab\there", "new\nline", "-dash",
                                  "zero\u200bwidth"])
def test_names_are_bounded_and_printable(runtime: Runtime, name: str) -> None:
    with session_scope(runtime.sessions) as session, pytest.raises(ValidationError) as caught:
        tokens.create_token(session, name=name, role="read", actor="tester")
    assert caught.value.field == "name"


def test_names_are_unique_and_revocation_is_final(runtime: Runtime) -> None:
    token = create(runtime, "scraper", "read")
    with session_scope(runtime.sessions) as session, pytest.raises(ConflictError):
        tokens.create_token(session, name="scraper", role="read", actor="tester")
    with session_scope(runtime.sessions) as session:
        revoked = tokens.revoke_token(session, name="scraper", actor="admin-user")
        assert revoked.revoked_at is not None
        assert tokens.find_principal(session, token) is None
    with session_scope(runtime.sessions) as session, pytest.raises(ConflictError):
        tokens.revoke_token(session, name="scraper", actor="admin-user")
    with session_scope(runtime.sessions) as session, pytest.raises(NotFoundError):
        tokens.revoke_token(session, name="nobody", actor="admin-user")
    with session_scope(runtime.sessions) as session:
        listed = tokens.list_tokens(session)
        assert [(t.name, t.role, t.revoked_at is not None) for t in listed] == [
            ("scraper", "read", True)]
        assert "digest" not in listed[0].to_dict()
        audit = registry.list_audit(session)
    assert [(e.action, e.actor, e.details) for e in audit] == [
        ("token-revoke", "admin-user", {"token": "scraper", "role": "read"}),
        ("token-create", "tester", {"token": "scraper", "role": "read"}),
    ]


def test_imported_tokens_must_be_long_and_distinct(runtime: Runtime) -> None:
    with session_scope(runtime.sessions) as session:
        with pytest.raises(ValidationError, match="at least 32"):
            tokens.add_token(session, name="weak", role="read", token="x", actor="t")
        tokens.add_token(session, name="first", role="read", token=STRONG, actor="t")
        with pytest.raises(ConflictError, match="another name"):
            tokens.add_token(session, name="second", role="read", token=STRONG, actor="t")


def test_open_until_the_first_token_and_never_again(runtime: Runtime) -> None:
    verifier = tokens.TokenVerifier(runtime.sessions)
    assert verifier.is_open()
    create(runtime, "only", "admin")
    assert not verifier.is_open()
    with session_scope(runtime.sessions) as session:
        tokens.revoke_token(session, name="only", actor="t")
    assert not tokens.TokenVerifier(runtime.sessions).is_open()  # locked, not reopened


def test_a_revocation_elsewhere_takes_effect_after_the_cache_lifetime(runtime: Runtime
                                                                       ) -> None:
    now = [100.0]
    verifier = tokens.TokenVerifier(runtime.sessions, ttl_s=2.0, clock=lambda: now[0])
    token = create(runtime, "bot", "ingest")
    assert verifier.authenticate(token) is not None
    with session_scope(runtime.sessions) as session:  # another process revokes it
        tokens.revoke_token(session, name="bot", actor="t")
    now[0] += 1.0
    assert verifier.authenticate(token) is not None  # still remembered
    now[0] += 1.5
    assert verifier.authenticate(token) is None
    now[0] += 10
    assert verifier.authenticate(token) is None  # unknown tokens are never remembered


def test_legacy_tokens_are_imported_once_with_a_warning(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    legacy = {"ops": SecretStr("o" * 40), "collector": SecretStr("c" * 40)}
    runtime = open_runtime(database_url, tmp_path, api_tokens=legacy, operators=["ops"])
    try:
        with caplog.at_level(logging.WARNING, logger="monitor.store.tokens"):
            assert tokens.import_legacy_tokens(runtime.sessions, runtime.settings) == 2
        assert "remove MONITOR_API_TOKENS" in caplog.text.replace("Remove", "remove")
        assert "o" * 40 not in caplog.text
        assert tokens.import_legacy_tokens(runtime.sessions, runtime.settings) == 0
        with session_scope(runtime.sessions) as session:
            ops = tokens.find_principal(session, "o" * 40)
            collector = tokens.find_principal(session, "c" * 40)
            assert ops is not None and ops.roles == {"operator", "read"}
            assert collector is not None and collector.roles == {"ingest", "read"}
            tokens.revoke_token(session, name="collector", actor="t")
        # a revoked legacy token stays revoked although the variable still names it
        assert tokens.import_legacy_tokens(runtime.sessions, runtime.settings) == 0
        with session_scope(runtime.sessions) as session:
            assert tokens.find_principal(session, "c" * 40) is None
            actions = session.scalars(select(AuditEntry.action)).all()
        assert sorted(actions) == ["token-import", "token-import", "token-revoke"]
    finally:
        runtime.close()


def test_bootstrap_admin_only_while_no_admin_exists(runtime: Runtime) -> None:
    settings = runtime.settings.model_copy(update={
        "bootstrap_admin_token": SecretStr("b" * 48)})
    assert tokens.bootstrap_admin(runtime.sessions, settings)
    assert not tokens.bootstrap_admin(runtime.sessions, settings)
    with session_scope(runtime.sessions) as session:
        admin = tokens.find_principal(session, "b" * 48)
        assert admin is not None and admin.name == "admin" and admin.may("operator")
        tokens.revoke_token(session, name="admin", actor="t")
    # no active admin any more, but the name is taken: warned, not re-imported
    assert not tokens.bootstrap_admin(runtime.sessions, settings)


def test_a_bad_legacy_name_is_a_config_error(runtime: Runtime) -> None:
    settings = runtime.settings.model_copy(update={"api_tokens": {"bad name": SecretStr(STRONG)}})
    with pytest.raises(ConfigError, match="MONITOR_API_TOKENS: token 'bad name'"):
        tokens.import_legacy_tokens(runtime.sessions, settings)


def test_cli_creates_lists_and_revokes(sqlite_url: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    open_runtime(sqlite_url, tmp_path).close()
    monkeypatch.setenv("MONITOR_DATABASE_URL", sqlite_url)
    assert main(["token", "create", "--name", "prometheus", "--role", "read",
                 "--actor", "dana"]) == 0
    created = capsys.readouterr()
    token = created.out.strip()
    assert token.startswith("mtk_") and "shown this once" in created.err
    assert main(["token", "create", "--name", "prometheus", "--role", "read"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["token", "create", "--name", "x", "--role", "root"]) == 2
    assert "role must be one of" in capsys.readouterr().err

    assert main(["token", "list"]) == 0
    listed = capsys.readouterr().out
    assert "prometheus" in listed and token[:tokens.PREFIX_LENGTH] in listed
    assert token not in listed
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert digest not in listed

    secret = tmp_path / "grafana.token"
    secret.write_text("g" * 40 + "\n")
    for _ in range(2):  # idempotent
        assert main(["token", "import", "--name", "grafana", "--role", "read",
                     "--file", str(secret)]) == 0
    secret.write_text("h" * 40)
    assert main(["token", "import", "--name", "grafana", "--role", "read",
                 "--file", str(secret)]) == 2
    capsys.readouterr()

    assert main(["token", "revoke", "--name", "prometheus", "--actor", "dana"]) == 0
    assert main(["token", "revoke", "--name", "prometheus"]) == 2
    runtime = open_runtime(sqlite_url, tmp_path)
    try:
        with session_scope(runtime.sessions) as session:
            assert tokens.find_principal(session, token) is None
            audit = registry.list_audit(session)
    finally:
        runtime.close()
    assert [(e.action, e.actor) for e in audit if e.details["token"] == "prometheus"] == [
        ("token-revoke", "dana"), ("token-create", "dana")]
    for entry in audit:
        assert token not in str(entry.details)
