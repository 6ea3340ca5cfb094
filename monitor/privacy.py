"""Pseudonymisation of identifiers with a keyed hash (HMAC-SHA256).

Study UIDs, patient IDs and reader IDs are replaced before anything is stored. The key lives
outside the database, so the database alone cannot be linked back to a patient; the same key
maps the same identifier to the same pseudonym, which is what joins an override to its
inference and repeat studies to one patient. Each kind of identifier gets its own domain prefix
so a patient ID and a study UID that happen to be equal do not collide.
"""

from __future__ import annotations

import hashlib
import hmac


class Pseudonymiser:
    """Keyed hash of identifiers; ``None`` stays ``None``."""

    def __init__(self, key: bytes):
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)  # copied per value: no key setup

    def _hash(self, domain: str, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        mac = self._keyed.copy()
        mac.update(f"{domain}:{value}".encode())
        return mac.hexdigest()[:32]

    def study(self, study_uid: str | None) -> str | None:
        return self._hash("study", study_uid)

    def patient(self, patient_id: str | None) -> str | None:
        return self._hash("patient", patient_id)

    def reader(self, reader_id: str | None) -> str | None:
        return self._hash("reader", reader_id)
