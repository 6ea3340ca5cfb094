"""``monitor.collect.sdk`` stays importable for one release, with a deprecation warning."""

from __future__ import annotations

import subprocess
import sys


def test_old_import_warns_and_gives_the_client() -> None:
    script = ("import warnings; warnings.simplefilter('error')\n"
              "try:\n    import monitor.collect.sdk\n"
              "except DeprecationWarning as exc:\n    print(exc)\n"
              "warnings.simplefilter('ignore')\n"
              "from monitor.collect.sdk import MonitorClient\n"
              "import monitor_client\n"
              "print(MonitorClient is monitor_client.MonitorClient)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=60)
    warning, same = done.stdout.splitlines()
    assert "imaging-monitor-client" in warning
    assert same == "True"
