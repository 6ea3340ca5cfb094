"""The in-process collector, DICOM headers through the whole write path, and PHI never stored."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom
import pytest
from monitor_client.dicom import load_header
from pydicom.data import get_testdata_file

from monitor.collect.inprocess import InProcessCollector
from monitor.errors import BatchValidationError
from monitor.runtime import Runtime
from monitor.store import repo
from monitor.store.db import session_scope
from tests.factories import inference_event, override_event

# pydicom's bundled files: four manufacturers, three modalities, with patient tags set.
TEST_FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm",
              "ExplVR_BigEnd.dcm")


def dicom_files() -> list[Path]:
    files = [Path(get_testdata_file(name)) for name in TEST_FILES]
    return [f for f in files if f is not None and pydicom.dcmread(f, stop_before_pixels=True)
            .get("Manufacturer")]


def test_collector_is_all_or_nothing(runtime: Runtime) -> None:
    collector = InProcessCollector(runtime)
    assert collector.log_inferences([inference_event() for _ in range(3)]).new == 3
    bad = inference_event(prediction={"scores": {"pneumothorax": 2.0}})
    with pytest.raises(BatchValidationError):
        collector.log_inferences([inference_event(), bad])
    with session_scope(runtime.sessions) as session:
        assert repo.count_rows(session)["inferences"] == 3


def test_reads_join_in_either_order(runtime: Runtime) -> None:
    collector = InProcessCollector(runtime)
    early, late = inference_event(), inference_event()
    collector.log_override(override_event(early["study_uid"], radiologist_positive=True,
                                          agrees_with_model=True))
    collector.log_inferences([early, late])
    collector.log_override(override_event(late["study_uid"]))
    with session_scope(runtime.sessions) as session:
        version = repo.get_model_version(session, "cxr-triage", "1.4.0")
        frame, _ = repo.window_frame(session, version.id)
    assert frame["radiologist_positive"].tolist() == [True, False]


def _dicom_events() -> tuple[list[dict], list[pydicom.Dataset]]:
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_files()]
    events = []
    for ds in datasets:
        event = inference_event(dicom=ds.to_json_dict(), study_uid=None)
        del event["scanner"], event["patient"]
        events.append(event)
    return events, datasets


def test_dicom_headers_fill_scanner_and_patient(sqlite_runtime: Runtime) -> None:
    events, datasets = _dicom_events()
    manufacturers = {str(ds.Manufacturer) for ds in datasets}
    modalities = {str(ds.Modality) for ds in datasets}
    assert len(manufacturers) >= 3 and len(modalities) >= 2, (manufacturers, modalities)
    InProcessCollector(sqlite_runtime).log_inferences(events)
    with session_scope(sqlite_runtime.sessions) as session:
        rows = repo.list_inferences(session, "cxr-triage", limit=100)
    assert {row["modality"] for row in rows} == modalities
    assert {row["manufacturer"] for row in rows} == manufacturers
    assert all(row["study_key"] and len(row["study_key"]) == 32 for row in rows)


def _phi_values(datasets: list[pydicom.Dataset]) -> set[str]:
    values = set()
    for ds in datasets:
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID",
                        "AccessionNumber"):
            value = str(ds.get(keyword, "") or "")
            if len(value) >= 4:
                values.add(value)
                values.update(part for part in value.split("^") if len(part) >= 4)
    return values


def test_patient_identifiers_never_reach_the_database_file(sqlite_runtime: Runtime,
                                                           tmp_path: Path) -> None:
    events, datasets = _dicom_events()
    shared = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"
    if shared.exists():  # the real files too, with their (dummy but set) patient tags
        for path in sorted(shared.glob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            datasets.append(ds)
            event = inference_event(dicom=ds.to_json_dict(), study_uid=None)
            del event["scanner"], event["patient"]
            events.append(event)
    reads = [override_event(str(ds.StudyInstanceUID), reader=str(ds.get("PatientName")))
             for ds in datasets if ds.get("StudyInstanceUID")]
    collector = InProcessCollector(sqlite_runtime)
    collector.log_inferences(events)
    collector.log_overrides(reads)
    db_path = sqlite_runtime.settings.database_url.removeprefix("sqlite:///")
    sqlite_runtime.close()
    with sqlite3.connect(db_path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    blob = b"".join(Path(p).read_bytes() for p in Path(db_path).parent.glob("monitor.db*"))
    phi = _phi_values(datasets)
    assert len(phi) >= 10
    leaked = sorted(value for value in phi if value.encode() in blob)
    assert leaked == []


def test_header_from_file_keeps_only_allowed_tags() -> None:
    header = load_header(dicom_files()[0])
    assert "PatientName" not in header and "Manufacturer" in header
