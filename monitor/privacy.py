"""Pseudonymisation of identifiers with a keyed hash (HMAC-SHA256).

Study UIDs, patient IDs and reader IDs are replaced before anything is stored. The key lives
outside the database, so the database alone cannot be linked back to a patient; the same key
maps the same identifier to the same pseudonym, which is what joins an override to its
inference and repeat studies to one patient. Each kind of identifier gets its own domain prefix
so a patient ID and a study UID that happen to be equal do not collide.

A keyed hash cannot be re-keyed without the original identifiers, so a key rotation
(``monitor rotate-key``) runs for a while with two keys: the stored pseudonyms (``study``,
``patient``, ``reader``) stay under the previous key, so new events keep linking to old ones,
and the ``*_next`` pseudonyms are the new key's, moved into place when the rotation finishes.
"""

from __future__ import annotations

import hashlib
import hmac


class Pseudonymiser:
    """Keyed hash of identifiers; ``None`` stays ``None``. With ``previous_key`` (a rotation
    in progress) the stored pseudonyms are the previous key's and ``*_next`` the key's."""

    def __init__(self, key: bytes, previous_key: bytes | None = None):
        stored = key if previous_key is None else previous_key
        self._keyed = hmac.new(stored, digestmod=hashlib.sha256)  # copied per value: no setup
        self._next = None if previous_key is None else hmac.new(key, digestmod=hashlib.sha256)

    @property
    def rotating(self) -> bool:
        """Whether events also get the new key's pseudonyms (``*_next``)."""
        return self._next is not None

    @staticmethod
    def _hash(keyed: hmac.HMAC | None, domain: str, value: str | None) -> str | None:
        if keyed is None or value is None or value == "":
            return None
        mac = keyed.copy()
        mac.update(f"{domain}:{value}".encode())
        return mac.hexdigest()[:32]

    def study(self, study_uid: str | None) -> str | None:
        return self._hash(self._keyed, "study", study_uid)

    def patient(self, patient_id: str | None) -> str | None:
        return self._hash(self._keyed, "patient", patient_id)

    def reader(self, reader_id: str | None) -> str | None:
        return self._hash(self._keyed, "reader", reader_id)

    def study_next(self, study_uid: str | None) -> str | None:
        """The new key's pseudonym during a rotation, else ``None``."""
        return self._hash(self._next, "study", study_uid)

    def patient_next(self, patient_id: str | None) -> str | None:
        return self._hash(self._next, "patient", patient_id)

    def reader_next(self, reader_id: str | None) -> str | None:
        return self._hash(self._next, "reader", reader_id)
