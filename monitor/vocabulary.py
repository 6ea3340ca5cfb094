"""Names that several layers share and must spell the same way."""

from __future__ import annotations

from typing import Final, Literal

# A window's health, from its score (``monitor.detect.health``) and its sequential streams.
HealthStatus = Literal["green", "amber", "red"]
# A finding's severity, lowest first.
Severity = Literal["info", "warning", "critical"]

# The alias of the version that serves patients: what is monitored, exported as live and
# rolled back from. ``FALLBACK`` names the version kept ready as the rollback target.
PRODUCTION: Final = "production"
FALLBACK: Final = "fallback"

# The scanner and site fields a finding can be traced to (its stratum), most specific first:
# the order in which a field names a cause (``monitor.alerting.incidents``), and the causes
# the dashboard offers to accept.
STRATUM_FIELDS: Final = ("station", "scanner_model", "software_version", "site", "vendor")
