from __future__ import annotations

from monitor.privacy import Pseudonymiser


def test_keyed_stable_and_domain_separated() -> None:
    one, other = Pseudonymiser(b"k" * 32), Pseudonymiser(b"j" * 32)
    assert one.study("1.2.3") == one.study("1.2.3")
    assert one.study("1.2.3") != other.study("1.2.3")  # the key matters
    assert one.study("X1") != one.patient("X1") != one.reader("X1")
    assert one.patient(None) is None and one.reader("") is None
    assert len(one.study("1.2.3") or "") == 32 and "1.2.3" not in (one.study("1.2.3") or "")


def test_during_a_rotation_stored_pseudonyms_stay_the_previous_keys() -> None:
    old, new = b"o" * 32, b"n" * 32
    rotating = Pseudonymiser(new, previous_key=old)
    assert rotating.rotating and not Pseudonymiser(new).rotating
    assert rotating.patient("P1") == Pseudonymiser(old).patient("P1")  # joins keep linking
    assert rotating.patient_next("P1") == Pseudonymiser(new).patient("P1")
    assert rotating.study_next("S") == Pseudonymiser(new).study("S") != rotating.study("S")
    assert rotating.reader_next(None) is None and Pseudonymiser(new).reader_next("r") is None
