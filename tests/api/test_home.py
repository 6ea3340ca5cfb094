"""``GET /``: a small HTML page with links to the docs, the dashboard and metrics; no token
needed, nothing from the database, everything interpolated escaped."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from monitor.api import create_app
from monitor.api.home import dashboard_url
from monitor.runtime import Runtime
from tests.conftest import TEST_SECRET, make_settings, open_runtime


def links(page: str) -> set[str]:
    return set(re.findall(r'href="([^"]*)"', page))


def test_the_home_page_links_docs_dashboard_and_metrics_without_a_token(
        token_client: TestClient, runtime: Runtime) -> None:
    assert token_client.get("/v1/models").status_code == 401  # tokens are configured
    answer = token_client.get("/")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    page = answer.text
    assert {"docs", "metrics", "healthz", "readyz", "openapi.json",
            f"http://testserver:{runtime.settings.dashboard_port}/"} <= links(page)
    assert "README.md" in page and "<script" not in page
    for secret in (TEST_SECRET, runtime.settings.database_url, "mtk_"):
        assert secret not in page
    for link in ("docs", "metrics", "openapi.json"):  # the relative links resolve from /
        assert token_client.get(f"/{link}").status_code in (200, 401)
    assert "/" not in token_client.get("/openapi.json").json()["paths"]


def test_the_style_is_the_only_thing_the_policy_allows(client: TestClient) -> None:
    answer = client.get("/")
    style = re.search(r"<style>(.*?)</style>", answer.text, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in answer.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("monitor.example.org", "http://monitor.example.org:8501/"),
        ("10.0.0.5", "http://10.0.0.5:8501/"),
        ("::1", "http://[::1]:8501/"),
        (None, "http://127.0.0.1:8501/"),
        ('evil"><script>alert(1)</script>', "http://127.0.0.1:8501/"),
        ("a b", "http://127.0.0.1:8501/"),
        ("x" * 300, "http://127.0.0.1:8501/"),
    ],
)
def test_the_dashboard_link_is_on_the_host_asked_for_or_the_bind_address(
        tmp_path: Path, host: str | None, expected: str) -> None:
    settings = make_settings("sqlite:///x.db", tmp_path)
    assert dashboard_url(settings, host) == expected


def test_a_server_bound_to_every_address_links_the_dashboard_on_loopback(tmp_path: Path
                                                                        ) -> None:
    settings = make_settings("sqlite:///x.db", tmp_path, host="0.0.0.0", dashboard_port=8600)
    assert dashboard_url(settings, None) == "http://127.0.0.1:8600/"


def test_a_configured_dashboard_url_wins_and_is_escaped(sqlite_url: str, tmp_path: Path) -> None:
    runtime = open_runtime(sqlite_url, tmp_path, dashboard_port=9999,
                           dashboard_url='https://dash.example.org/?a=1&b="2"')
    try:
        page = TestClient(create_app(runtime)).get("/", headers={"host": "other:8000"}).text
    finally:
        runtime.close()
    assert 'href="https://dash.example.org/?a=1&amp;b=&quot;2&quot;"' in page
    assert ":9999" not in page and "other" not in page


def test_a_hostile_host_header_is_not_echoed(client: TestClient) -> None:
    page = client.get("/", headers={"host": "evil<b>.example:8000"}).text
    assert "evil" not in page and "<b>" not in page
