"""TensorFlow runtime: one loaded SavedModel version and the cheapest way to call it.

The serving signature is a concrete function. Calling it by keyword makes
TensorFlow bind, flatten and check the arguments, look for a gradient tape and
pack the outputs on every call, in Python, holding the GIL: on MNIST at batch
1 that is half of the call. The server has already validated the inputs and
never records gradients, so the function is called flat: the input tensors in
the order of its parameters, then its captured variables, through its atomic
(inference) function, the call ``_call_flat`` itself ends in when no tape is
watching; outputs come back flat and are named here. A v1 session callable on
the same SavedModel measured no cheaper and needs a graph of its own, so there
is one TensorFlow path, which also keeps device placement (GPUs) as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from tensorgate.server.errors import InvalidArgumentError, ModelLoadError
from tensorgate.server.runtimes.signature import Signature, TensorInfo
from tensorgate.v1 import codec

log = logging.getLogger(__name__)


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
        self._input_order = list(self._function.function_type.parameters)
        if sorted(self._input_order) != sorted(self.signature.inputs):
            raise ModelLoadError(f"signature {signature_name!r} takes {self._input_order}, not its named inputs")
        self._call_flat = self._function._inference_function.call_flat
        self._output_order = tf.nest.flatten({name: name for name in self._function.structured_outputs})
        self.runtime = "tensorflow"
        self.call_seconds = 0.0  # measured by the loader's warm-up

    def op_types(self) -> set[str]:
        """Every op type in the signature's graph, nested functions included."""
        graph = self._function.graph.as_graph_def()
        types = {node.op for node in graph.node}
        for function in graph.library.function:
            types.update(node.op for node in function.node_def)
        return types

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the signature on validated inputs; returns every output as an array.

        An op that rejects its input (a ``tf.debugging`` check in the model)
        is the caller's error: INVALID_ARGUMENT.
        """
        try:
            with tf.device(self.device):
                tensors = [tf.constant(inputs[name]) for name in self._input_order]
                outputs = self._call_flat(*tensors, *self._function.captured_inputs)
        except tf.errors.InvalidArgumentError as exc:
            raise InvalidArgumentError(f"the model rejected the input: {exc.message}") from None
        return {name: tensor.numpy() for name, tensor in zip(self._output_order, outputs, strict=True)}
