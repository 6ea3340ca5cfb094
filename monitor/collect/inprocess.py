"""The in-process collector: an inference server in Python writes straight to the store,
with the same validation and all-or-nothing semantics as the HTTP API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monitor.collect.ingest import IngestResult, store_inferences, store_overrides
from monitor.config import Settings
from monitor.runtime import Runtime
from monitor.schema import INFERENCES, OVERRIDES, TimestampBounds


class InProcessCollector:
    """``log_*`` validate a batch, write it and commit before returning.

    Example (the README's, run by tests/test_readme.py)::

        collector = InProcessCollector.open()         # MONITOR_DATABASE_URL, MONITOR_SECRET_KEY
        collector.log_inferences(events)              # committed when it returns
    """

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    @classmethod
    def open(cls, settings: Settings | None = None) -> InProcessCollector:
        return cls(Runtime.open(settings, background_checkpoint=True))

    def log_inferences(self, events: Sequence[Mapping[str, Any]]) -> IngestResult:
        batch = INFERENCES.from_python(list(events), self._bounds())
        return store_inferences(self.runtime, batch)

    def log_overrides(self, events: Sequence[Mapping[str, Any]]) -> IngestResult:
        batch = OVERRIDES.from_python(list(events), self._bounds())
        return store_overrides(self.runtime, batch)

    def _bounds(self) -> TimestampBounds:
        return TimestampBounds.from_settings(self.runtime.settings)

    def log_inference(self, event: Mapping[str, Any]) -> IngestResult:
        return self.log_inferences([event])

    def log_override(self, event: Mapping[str, Any]) -> IngestResult:
        return self.log_overrides([event])

    def close(self) -> None:
        self.runtime.close()
