"""Deprecated: the client moved to its own distribution, ``imaging-monitor-client``
(``from monitor_client import MonitorClient``). This import keeps working for one release."""

import warnings

from monitor_client.client import (
    DEFAULT_DEAD_LETTER_MAX_BYTES,
    DEFAULT_DEAD_LETTER_PATH,
    INFERENCES_PATH,
    OVERRIDES_PATH,
    DeadLetterFile,
    MonitorClient,
    backoff_delay,
    read_dead_letters,
)

__all__ = [
    "DEFAULT_DEAD_LETTER_MAX_BYTES", "DEFAULT_DEAD_LETTER_PATH", "INFERENCES_PATH",
    "OVERRIDES_PATH", "DeadLetterFile", "MonitorClient", "backoff_delay", "read_dead_letters",
]

warnings.warn("monitor.collect.sdk is deprecated: install imaging-monitor-client and use "
              "`from monitor_client import MonitorClient`", DeprecationWarning, stacklevel=2)
