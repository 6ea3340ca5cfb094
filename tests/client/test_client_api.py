"""The HTTP SDK against the real API served by uvicorn on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
from monitor_client.client import MonitorClient
from pydicom.data import get_testdata_file

from monitor.api import create_app
from monitor.runtime import Runtime
from monitor.store import repo
from monitor.store.db import session_scope
from tests.factories import inference_event, override_event
from tests.servers import running_app


def test_client_delivers_everything_once(runtime: Runtime, tmp_path: Path) -> None:
    events = [inference_event(embedding=None) for _ in range(1_200)]
    rng = np.random.default_rng(0)
    with running_app(create_app(runtime)) as url:
        client = MonitorClient(url, batch_size=250, flush_interval_s=0.2,
                               dead_letter_path=tmp_path / "dead-letter.jsonl")
        for event in events:
            client.log_inference({**event, "embedding": rng.standard_normal(32)})
        client.log_inference(events[0])  # a repeat of an event already logged
        bad = inference_event(prediction={"scores": {"pneumothorax": 7.0}})
        client.log_inference(bad)  # rejected alone; its batch-mates still arrive
        client.log_override(override_event(events[1]["study_uid"]))
        dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
        client.log_inference({"model": "cxr-triage", "model_version": "1.4.0",
                              "prediction": {"scores": {"pneumothorax": 0.2}}}, dicom=dataset)
        assert client.flush(timeout_s=60)
        client.close()
    assert client.stats["rejected_events"] == client.stats["dead_lettered"] == 1
    (letter,) = (tmp_path / "dead-letter.jsonl").read_text().splitlines()
    assert json.loads(letter)["event_id"] == bad["event_id"]
    with session_scope(runtime.sessions) as session:
        counts = repo.count_rows(session)
        rows = repo.list_inferences(session, "cxr-triage", limit=1000)
    assert counts["inferences"] == 1_201 and counts["overrides"] == 1
    assert any(row["manufacturer"] == "GE MEDICAL SYSTEMS" for row in rows)
