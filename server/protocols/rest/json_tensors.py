"""JSON values to NumPy arrays and back, with the codec core's rules, for the REST protocols.

JSON has numbers, booleans and strings; each REST protocol says which dtype they become (the v2 request's
``datatype``, the TF Serving signature's dtype), and this module checks that the values are of that kind before
converting them: integers for integer types (range-checked, never wrapped), numbers for floating-point types,
``true``/``false`` for booleans. Malformed values raise ``TensorCodecError`` naming the tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tensorgate.v1.tensors import Dtype, TensorCodecError, narrowed

_ALLOWED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}  # NumPy kinds of JSON values each dtype kind takes
_WANTED = {"b": "true or false", "i": "integers", "u": "integers", "f": "numbers"}
_GOT = {"b": "booleans", "i": "integers", "u": "integers", "f": "fractions", "U": "strings"}


def numbers_from_json(data: Any, dtype: Dtype, name: str) -> np.ndarray:
    """JSON numbers (a value or nested lists of one shape) as an array of ``dtype`` in the shape of ``data``."""
    try:
        array = np.array(data)
    except (ValueError, OverflowError):
        raise TensorCodecError(f"{name}: the values are not a rectangular array of numbers") from None
    if array.size == 0:
        return array.astype(dtype.numpy)
    kind = dtype.numpy.kind
    if kind in "iu" and array.dtype.kind in "fO":
        # NumPy makes floats (or objects) of integers past int64's range, such as a UINT64 over 2**63 - 1.
        big = _big_integers(data, array.shape)
        if big is not None:
            return narrowed(big, dtype.numpy, name)
    if array.dtype.kind not in _ALLOWED_KINDS[kind]:
        got = _GOT.get(array.dtype.kind, "a ragged or mixed array")
        raise TensorCodecError(f"{name}: {dtype.name} takes {_WANTED[kind]}, got {got}")
    if kind in "iu" and not np.can_cast(array.dtype, dtype.numpy):
        return narrowed(array, dtype.numpy, name)
    return array.astype(dtype.numpy)


def _big_integers(data: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """``data`` as an object array of Python ints of ``shape`` when every value is one, else None."""
    values = np.array(data, dtype=object)
    if values.shape != shape or not all(type(value) is int for value in values.flat):
        return None
    return values


def strings_to_json(array: np.ndarray, undecodable: Callable[[bytes], Any]) -> Any:
    """A string array as (nested lists of) text, row-major; an element that is not UTF-8 becomes
    ``undecodable(element)`` (which may raise)."""
    return _decoded(array.tolist(), undecodable)


def _decoded(value: Any, undecodable: Callable[[bytes], Any]) -> Any:
    if isinstance(value, list):
        return [_decoded(element, undecodable) for element in value]
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode()
    except UnicodeDecodeError:
        return undecodable(value)
