"""An API client with tokens in the token store: one per role. ``alice`` is an operator,
``viewer`` reads, ``ingest-bot`` ingests, ``root`` is an admin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from monitor.api import create_app
from monitor.runtime import Runtime
from monitor.store import repo, tokens
from monitor.store.db import session_scope

# name, role, token (fixed values: tests build headers from them at import)
TEST_TOKENS = {
    "ingest": ("ingest-bot", "mtk_test-ingest-token-0123456789abcdefghijkl"),
    "read": ("viewer", "mtk_test-read-token-0123456789abcdefghijklmno"),
    "operator": ("alice", "mtk_test-operator-token-0123456789abcdefghij"),
    "admin": ("root", "mtk_test-admin-token-0123456789abcdefghijklmn"),
}
HEADERS = {role: {"Authorization": f"Bearer {token}"} for role, (_, token) in TEST_TOKENS.items()}
OPERATOR = HEADERS["operator"]
VIEWER = HEADERS["read"]
INGEST = HEADERS["ingest"]
ADMIN = HEADERS["admin"]


def store_test_tokens(runtime: Runtime) -> None:
    """One token per role (``TEST_TOKENS``) in the runtime's database."""
    with session_scope(runtime.sessions) as session:
        for role, (name, token) in TEST_TOKENS.items():
            tokens.add_token(session, name=name, role=role, token=token, actor="test-setup")


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    """The app on an open database (no token)."""
    with TestClient(create_app(runtime)) as test_client:
        yield test_client


def stored(runtime: Runtime) -> dict[str, int]:
    with session_scope(runtime.sessions) as session:
        return repo.count_rows(session)


@pytest.fixture
def token_client(runtime: Runtime) -> Iterator[TestClient]:
    store_test_tokens(runtime)
    with TestClient(create_app(runtime)) as test_client:
        yield test_client
