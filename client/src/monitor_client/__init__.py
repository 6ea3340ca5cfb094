"""Client of the imaging-AI monitoring service: log every inference and every radiologist
read from an inference server, with no dependency beyond httpx and pydantic.

    from monitor_client import MonitorClient
    monitor = MonitorClient("http://monitor:8000", token=os.environ["MONITOR_TOKEN"])
    monitor.log_inference({"model": "cxr-triage", "model_version": "1.4.0",
                           "study_uid": "1.2.840.1", "prediction": {"scores": {"x": 0.8}}})

``events`` holds the event contract the service validates against, ``codec`` the embedding
codec, ``dicom`` (extra ``[dicom]``) the allow-listed DICOM header reading.
"""

from monitor_client.client import DeadLetterFile, MonitorClient, read_dead_letters
from monitor_client.codec import decode_embedding, encode_embedding
from monitor_client.errors import ConfigError, MonitorError, ValidationError
from monitor_client.events import InferenceEvent, OverrideEvent, Patient, Prediction, Scanner

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DeadLetterFile", "InferenceEvent", "MonitorClient", "MonitorError",
    "OverrideEvent", "Patient", "Prediction", "Scanner", "ValidationError", "decode_embedding",
    "encode_embedding", "read_dead_letters",
]
