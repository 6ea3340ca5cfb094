"""``GET /``: a small page pointing at what the service offers (the API documentation, the
dashboard, metrics, health, the README). Unauthenticated, like ``/healthz``: it shows nothing
from the database and no setting but the dashboard's address; everything interpolated is
HTML-escaped, and the page runs no script and loads nothing (its Content-Security-Policy
allows only its own style, by hash)."""

from __future__ import annotations

import base64
import hashlib
import html
import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from monitor.config import Settings

router = APIRouter()

# A host name or an IP address as a browser may use it in a link; anything else in the Host
# header is not echoed back.
_HOST_NAME = re.compile(r"[A-Za-z0-9.-]{1,253}")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_ANY_ADDRESS = frozenset({"0.0.0.0", "::"})

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;"
          "padding:0 1rem;line-height:1.5;color:#1f2933}"
          "code{background:#f0f2f5;padding:0 .2rem;border-radius:3px}"
          "li{margin:.3rem 0}")
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def dashboard_url(settings: Settings, request_host: str | None) -> str:
    """Where the dashboard is: ``MONITOR_DASHBOARD_URL`` when set, else the host this page
    was asked for (or the bind address) at ``MONITOR_DASHBOARD_PORT``."""
    if "dashboard_url" in settings.model_fields_set:
        return settings.dashboard_url
    host = (request_host or "").strip()
    if not (_HOST_NAME.fullmatch(host) or (":" in host and _IPV6.fullmatch(host))):
        host = settings.host
    if host in _ANY_ADDRESS or not host:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host.strip('[]')}]"
    return f"http://{host}:{settings.dashboard_port}/"


def home_page(dashboard: str) -> str:
    """The page, with the dashboard's address escaped."""
    link = html.escape(dashboard, quote=True)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Imaging AI monitor</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>Imaging AI monitor</h1>
<p>Post-deployment monitoring of medical-imaging AI models. This is its HTTP API.</p>
<ul>
<li><a href="docs">API documentation</a> (interactive; also <a href="redoc">ReDoc</a> and
the <a href="openapi.json">OpenAPI document</a>)</li>
<li><a href="{link}">Quality dashboard</a> (Streamlit; <code>monitor dashboard</code> or
<code>monitor demo</code> serves it)</li>
<li><a href="metrics">Prometheus metrics</a> (<code>/metrics</code>)</li>
<li>Health: <a href="healthz">liveness</a> and <a href="readyz">readiness</a></li>
<li>Documentation: <code>README.md</code> at the root of the repository, and
<code>docs/</code> beside it (security, metrics, paging, runbooks)</li>
</ul>
<p>Every route but this page, the documentation and the health probes needs a bearer token
once the database holds one (<code>monitor token create</code>).</p>
</body>
</html>
"""


@router.get("/", tags=["service"], response_class=HTMLResponse, include_in_schema=False)
def home(request: Request) -> HTMLResponse:
    """Links to the API documentation, the dashboard, metrics and health. No token needed;
    nothing from the database."""
    settings: Settings = request.app.state.runtime.settings
    return HTMLResponse(home_page(dashboard_url(settings, request.url.hostname)),
                        headers=HEADERS)
