"""An API client with tokens configured: ``alice`` is an operator, ``viewer`` is not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from monitor.api import create_app
from monitor.runtime import Runtime

OPERATOR = {"Authorization": "Bearer op-token"}
VIEWER = {"Authorization": "Bearer view-token"}


@pytest.fixture
def token_client(runtime: Runtime) -> Iterator[TestClient]:
    runtime.settings = runtime.settings.model_copy(update={
        "api_tokens": {"alice": SecretStr("op-token"), "viewer": SecretStr("view-token")},
        "operators": ["alice"],
    })
    with TestClient(create_app(runtime)) as test_client:
        yield test_client
