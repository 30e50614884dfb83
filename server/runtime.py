"""TensorFlow runtime: one loaded SavedModel version and the fast way to call it.

The serving signature is a concrete function; it is called by keyword with
tensors, which costs a fraction of a millisecond, where ``model.predict()``
would cost tens of milliseconds per call.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from tensorgate.server.errors import InvalidArgumentError
from tensorgate.server.signature import Signature, TensorInfo
from tensorgate.v1 import codec

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """A version directory could not be loaded or warmed up; the message says why."""


def _tensor_info(name: str, dtype: tf.DType, shape: tf.TensorShape) -> TensorInfo:
    try:
        data_type = codec.dtype_from_name(dtype.name)
    except codec.TensorCodecError as exc:
        raise ModelLoadError(f"tensor {name!r}: {exc}") from None
    dims = None if shape.rank is None else tuple(-1 if d is None else int(d) for d in shape.as_list())
    return TensorInfo(name=name, dtype=data_type, shape=dims)


def _signature_of(function: tf.types.experimental.ConcreteFunction, name: str) -> Signature:
    _, input_specs = function.structured_input_signature
    outputs = function.structured_outputs
    if not isinstance(outputs, dict):
        raise ModelLoadError(f"signature {name!r} must return a dict of named tensors, got {type(outputs).__name__}")
    return Signature(
        name=name,
        inputs={key: _tensor_info(key, spec.dtype, spec.shape) for key, spec in sorted(input_specs.items())},
        outputs={key: _tensor_info(key, out.dtype, out.shape) for key, out in sorted(outputs.items())},
    )


def _warm_up_inputs(signature: Signature) -> dict[str, np.ndarray]:
    """One example of zeros (empty strings) per input; dimensions of any size become 1."""
    inputs = {}
    for name, info in signature.inputs.items():
        shape = tuple(1 if d < 0 else d for d in info.shape or (1,))
        dtype = codec.numpy_dtype(info.dtype)
        inputs[name] = np.full(shape, b"", dtype=object) if dtype == codec.STRING_DTYPE else np.zeros(shape, dtype)
    return inputs


class SavedModelRuntime:
    """A SavedModel loaded in this process, ready to run its serving signature."""

    def __init__(self, path: Path, signature_name: str, device: str) -> None:
        self.device = device
        try:
            with tf.device(device):
                self._loaded = tf.saved_model.load(str(path))
        except Exception as exc:  # TensorFlow raises many types for a corrupt SavedModel
            raise ModelLoadError(f"cannot load SavedModel from {path}: {type(exc).__name__}: {exc}") from None
        signatures = self._loaded.signatures
        if signature_name not in signatures:
            raise ModelLoadError(f"SavedModel {path} has no signature {signature_name!r}; it has {sorted(signatures)}")
        self._function = signatures[signature_name]
        self.signature = _signature_of(self._function, signature_name)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the signature on validated inputs; returns every output as an array.

        An op that rejects its input (a ``tf.debugging`` check in the model)
        is the caller's error: INVALID_ARGUMENT.
        """
        try:
            with tf.device(self.device):
                outputs = self._function(**{name: tf.convert_to_tensor(value) for name, value in inputs.items()})
        except tf.errors.InvalidArgumentError as exc:
            raise InvalidArgumentError(f"the model rejected the input: {exc.message}") from None
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def warm_up(self) -> None:
        """Run one synthetic example so that the first real request does not pay for tracing.

        A model that cannot run it is reported as a failed load.
        """
        try:
            self.predict(_warm_up_inputs(self.signature))
        except Exception as exc:
            raise ModelLoadError(f"warm-up failed: {type(exc).__name__}: {exc}") from None
