"""MLServer custom runtime for the bench: the MNIST SavedModel's serving signature on each (adaptive) batch.

Runs inside the bench's MLServer virtualenv (``mlserver start`` with this folder as the model folder); the bench
writes ``settings.json`` and ``model-settings.json`` next to a copy of this file.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class SavedModelRuntime(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        self._signature: Any = tf.saved_model.load(self.settings.parameters.uri).signatures["serving_default"]
        self._input = next(iter(self._signature.structured_input_signature[1]))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        outputs = self._signature(**{self._input: tf.constant(x, tf.float32)})
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, value.numpy()) for name, value in outputs.items()],
        )
