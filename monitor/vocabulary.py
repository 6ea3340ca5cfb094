"""Names that several layers share and must spell the same way."""

from __future__ import annotations

from typing import Final

# The scanner and site fields a finding can be traced to (its stratum), most specific first:
# the order in which a field names a cause (``monitor.alerting.incidents``), and the causes
# the dashboard offers to accept.
STRATUM_FIELDS: Final = ("station", "scanner_model", "software_version", "site", "vendor")
