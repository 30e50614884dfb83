"""KServe model server for the bench: the MNIST SavedModel's serving signature on each request (KServe's Python
server does not batch). Runs inside the bench's KServe virtualenv:

    python kserve_server.py MODEL_DIR --model_name mnist --grpc_port P --http_port Q --workers 1 \
        --enable_latency_logging false

KServe at its fastest here: no latency log line per request, and its gRPC interceptor's INFO line per call
("grpc method: ...") silenced by raising the ``kserve`` logger to WARNING. KServe binds its ports on every
interface ([::] for gRPC, 0.0.0.0 for HTTP); it has no option to bind loopback only.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import tensorflow as tf
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server


class SavedModel(Model):  # type: ignore[misc]
    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.load()

    def load(self) -> bool:
        self.signature: Any = tf.saved_model.load(self.model_dir).signatures["serving_default"]
        self.input_name = next(iter(self.signature.structured_input_signature[1]))
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers: Any = None, response_headers: Any = None) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        outputs = self.signature(**{self.input_name: tf.constant(x, tf.float32)})
        infer_outputs = []
        for name, value in outputs.items():
            output = InferOutput(name=name, shape=list(value.shape), datatype="FP32")
            output.set_data_from_numpy(value.numpy(), binary_data=payload.from_grpc)
            infer_outputs.append(output)
        return InferResponse(
            model_name=self.name, infer_outputs=infer_outputs, response_id=payload.id, use_binary_outputs=True
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("model_dir")
    args, _ = parser.parse_known_args()
    server = ModelServer()  # reads its flags (ports, workers, logging) from the command line
    logging.getLogger("kserve").setLevel(logging.WARNING)
    server.start([SavedModel(args.model_name, args.model_dir)])
