"""The embedding codec: a vector travels as base64 of its little-endian float32 bytes, about
a third of the size of a JSON list and exact to float32.

Encoding takes a list or tuple of numbers without numpy; numpy arrays and torch tensors (on
any device) are taken as they are. Decoding to an array needs numpy (the ``[numpy]`` extra).
"""

from __future__ import annotations

import array
import binascii
import sys
from typing import TYPE_CHECKING, Any

from monitor_client.errors import ValidationError

try:  # SIMD base64 where installed (the service has it); the standard library otherwise
    import pybase64 as _base64
except ImportError:  # pragma: no cover - depends on the environment
    import base64 as _base64  # type: ignore[no-redef]

if TYPE_CHECKING:
    import numpy as np


def encode_embedding(embedding: Any) -> str:
    """A one-dimensional vector (list, tuple, numpy array, torch tensor) -> base64 of its
    little-endian float32 bytes."""
    if hasattr(embedding, "detach"):  # a torch tensor, possibly on a GPU
        embedding = embedding.detach().cpu()
        embedding = embedding.numpy() if _numpy() is not None else embedding.tolist()
    if isinstance(embedding, list | tuple):
        return _encode_sequence(embedding)
    return _encode_array(embedding)


def embedding_bytes(value: bytes | str) -> bytes:
    """The float32 bytes of an embedding given as the contract's base64 text (or as bytes)."""
    if isinstance(value, str):
        try:
            value = _base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationError(f"embedding is not valid base64: {exc}",
                                  field="embedding") from None
    if len(value) % 4:
        raise ValidationError(
            f"embedding has {len(value)} bytes, not a whole number of float32 values",
            field="embedding",
        )
    return value


def decode_embedding(value: bytes | str) -> np.ndarray:
    """Float32 bytes, or the contract's base64 string -> float32 vector (needs numpy)."""
    import numpy as np

    return np.frombuffer(embedding_bytes(value), dtype="<f4").astype(np.float32)


def _encode_sequence(values: list[Any] | tuple[Any, ...]) -> str:
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        if _numpy() is not None:  # numpy scalars, nested lists: numpy says what is wrong
            return _encode_array(values)
        raise ValidationError("embedding must be a flat list of numbers", field="embedding")
    packed = array.array("f", values)  # beyond float32 becomes inf, as in numpy: refused later
    if sys.byteorder == "big":  # pragma: no cover - no such machine in CI
        packed.byteswap()
    return _base64.b64encode(packed.tobytes()).decode("ascii")


def _encode_array(values: Any) -> str:
    import numpy as np

    values = np.asarray(values)
    if values.ndim != 1:
        raise ValidationError(
            f"embedding must be one-dimensional, got shape {values.shape}", field="embedding"
        )
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise ValidationError(
            f"embedding must hold real numbers, got dtype {values.dtype}", field="embedding"
        )
    return _base64.b64encode(values.astype("<f4", copy=False).tobytes()).decode("ascii")


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy
