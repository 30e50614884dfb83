"""Checks a request's decoded inputs against the model's signature and the server's limits.

Everything a caller can get wrong is caught here, before TensorFlow sees the
request, with a message that says what was expected and what arrived.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tensorgate.server.errors import InvalidArgumentError, quote
from tensorgate.server.runtimes.signature import Signature, TensorInfo
from tensorgate.v1 import codec


@dataclass(frozen=True)
class Limits:
    """Server-wide bounds on one request."""

    max_examples: int
    max_tensor_elements: int
    reject_non_finite: bool


def validate_inputs(signature: Signature, inputs: Mapping[str, np.ndarray], limits: Limits) -> int:
    """Raise InvalidArgumentError unless ``inputs`` fit ``signature``; return the batch size.

    The batch size is the first dimension shared by every input (1 for a
    signature whose inputs are scalars).
    """
    missing = sorted(set(signature.inputs) - set(inputs))
    unknown = sorted(set(inputs) - set(signature.inputs))
    if missing or unknown:
        raise InvalidArgumentError(
            f"inputs {sorted(inputs)} do not match the signature: expected {sorted(signature.inputs)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
        )
    batch_sizes = set()
    for name, info in signature.inputs.items():
        array = inputs[name]
        _check_tensor(name, info, array, limits)
        if array.ndim:
            batch_sizes.add(array.shape[0])
    if len(batch_sizes) > 1:
        raise InvalidArgumentError(f"inputs disagree on the batch size (first dimension): {sorted(batch_sizes)}")
    batch = batch_sizes.pop() if batch_sizes else 1
    if batch > limits.max_examples:
        raise InvalidArgumentError(f"batch of {batch} examples exceeds the limit of {limits.max_examples}")
    return batch


def validate_output_filter(signature: Signature, output_filter: Sequence[str]) -> None:
    """Raise InvalidArgumentError when an output name is not in the signature."""
    unknown = sorted(set(output_filter) - set(signature.outputs))
    if unknown:
        raise InvalidArgumentError(
            f"unknown outputs {unknown} in output_filter; outputs are {sorted(signature.outputs)}"
        )


def _check_tensor(name: str, info: TensorInfo, array: np.ndarray, limits: Limits) -> None:
    if array.dtype != codec.numpy_dtype(info.dtype):
        expected, got = codec.dtype_name(info.dtype), codec.dtype_name(codec.dtype_of_array(array))
        raise InvalidArgumentError(f"input {quote(name)}: expected dtype {expected}, got {got}")
    if info.shape is not None and not _shape_matches(info.shape, array.shape):
        raise InvalidArgumentError(f"input {quote(name)}: expected shape {list(info.shape)}, got {list(array.shape)}")
    if array.size == 0:
        raise InvalidArgumentError(
            f"input {quote(name)} is empty (shape {list(array.shape)}); send at least one example"
        )
    if array.size > limits.max_tensor_elements:
        raise InvalidArgumentError(
            f"input {quote(name)} has {array.size} elements, more than the limit of {limits.max_tensor_elements}"
        )
    if limits.reject_non_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidArgumentError(f"input {quote(name)} contains NaN or infinite values")


def _shape_matches(expected: tuple[int, ...], actual: tuple[int, ...]) -> bool:
    return len(expected) == len(actual) and all(e in (-1, a) for e, a in zip(expected, actual, strict=True))
