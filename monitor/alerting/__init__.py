"""The service's own alerting, for users without Prometheus: rules evaluated on every check
(``rules``), the alert state machine (``engine``), notifications with retry (``notify``) and
the config file that holds rules, channels and rollback policies (``config``)."""

from __future__ import annotations

from typing import Any


def register_check_hook() -> None:
    """Evaluate alerts after every check: add the engine to ``monitor.checks``'s
    ``on_check_complete`` hooks (once; calling again changes nothing)."""
    from monitor import checks
    from monitor.alerting.engine import on_check_complete

    hooks: list[Any] | None = getattr(checks, "on_check_complete", None)
    if hooks is not None and on_check_complete not in hooks:
        hooks.append(on_check_complete)
