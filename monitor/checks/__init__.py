"""The check stage, one module per step: ``windows`` (which studies a check reads),
``baselines`` (what they are compared with), ``run`` (every detector, the sequential layer
and the stored result), ``reports`` (the drift report of a window) and ``scheduler`` (which
windows are due, checked once each)."""

from monitor.checks.run import CheckHook, CheckOptions, CheckOutcome, run_check

__all__ = ["CheckHook", "CheckOptions", "CheckOutcome", "run_check"]
