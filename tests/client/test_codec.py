"""The embedding codec, with numpy and, in a subprocess, without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from monitor_client.codec import decode_embedding, embedding_bytes, encode_embedding
from monitor_client.errors import ValidationError


def test_round_trip_is_float32_little_endian() -> None:
    assert decode_embedding(encode_embedding(np.arange(4))).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert encode_embedding(np.array([1.0], dtype="<f4")) == "AACAPw=="  # 1.0f little-endian
    assert encode_embedding(np.array([1.0], dtype=">f8")) == "AACAPw=="
    assert encode_embedding(torch.tensor([1.0])) == "AACAPw=="


def test_lists_encode_as_arrays_do() -> None:
    values = np.random.default_rng(0).standard_normal(300)
    assert encode_embedding(values.tolist()) == encode_embedding(values)
    assert encode_embedding(tuple(values.tolist())) == encode_embedding(values)
    assert encode_embedding([1, 2]) == encode_embedding(np.array([1.0, 2.0]))
    with np.errstate(over="ignore"):  # beyond float32: infinite both ways, refused by the service
        assert encode_embedding([1e39]) == encode_embedding(np.array([1e39]))


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.zeros((2, 2)), [[1.0], [2.0]],
                                 ["a"]])
def test_what_is_not_a_vector_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError) as refused:
        encode_embedding(bad)
    assert refused.value.field == "embedding"


def test_decoding_checks_base64_and_length() -> None:
    with pytest.raises(ValidationError, match="whole number of float32"):
        embedding_bytes("AACA")  # 3 bytes
    with pytest.raises(ValidationError, match="not valid base64"):
        decode_embedding("not base64!")


def test_encoding_needs_no_numpy() -> None:
    """An inference server without numpy encodes lists exactly as numpy would."""
    script = textwrap.dedent("""
        import sys
        sys.modules["numpy"] = None  # any import of numpy now fails
        from monitor_client.codec import encode_embedding
        from monitor_client.errors import ValidationError
        print(encode_embedding([1.0, -0.5, 3]))
        try:
            encode_embedding([1.0, "x"])
        except ValidationError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=60)
    encoded, refusal = done.stdout.splitlines()
    assert encoded == encode_embedding(np.array([1.0, -0.5, 3.0]))
    assert "flat list of numbers" in refusal
