from __future__ import annotations

from monitor.privacy import Pseudonymiser


def test_keyed_stable_and_domain_separated() -> None:
    one, other = Pseudonymiser(b"k" * 32), Pseudonymiser(b"j" * 32)
    assert one.study("1.2.3") == one.study("1.2.3")
    assert one.study("1.2.3") != other.study("1.2.3")  # the key matters
    assert one.study("X1") != one.patient("X1") != one.reader("X1")
    assert one.patient(None) is None and one.reader("") is None
    assert len(one.study("1.2.3") or "") == 32 and "1.2.3" not in (one.study("1.2.3") or "")
