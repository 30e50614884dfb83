"""The transport limit: a grpc.aio server on tensorgate's Predict path and on the Open Inference Protocol's
ModelInfer that answers every call with a fixed response of the real size, doing no work. Same framework, same
message sizes as tensorgate. It also answers OIP ModelReady (true), so the bench waits for it as for any server.

    python bench/echo_server.py PORT PREDICT_RESPONSE_FILE MODEL_INFER_RESPONSE_FILE
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc

from tensorgate.compat.kserve_v2.grpc_service_pb2 import ModelReadyResponse


def fixed(response: bytes) -> grpc.RpcMethodHandler:
    async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    return grpc.unary_unary_rpc_method_handler(answer)  # no (de)serializers: bytes in, bytes out


async def serve(port: int, predict_response: bytes, model_infer_response: bytes) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "tensorgate.v1.InferenceService", {"Predict": fixed(predict_response)}
            ),
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService",
                {
                    "ModelInfer": fixed(model_infer_response),
                    "ModelReady": fixed(ModelReadyResponse(ready=True).SerializeToString()),
                },
            ),
        ]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), Path(sys.argv[2]).read_bytes(), Path(sys.argv[3]).read_bytes()))
