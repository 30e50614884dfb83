"""The transport limit: a grpc.aio server on tensorgate's Predict path that answers every call with a
fixed response of the real size, doing no work. Same framework, same message sizes as tensorgate.

    python bench/echo_server.py PORT RESPONSE_FILE
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc


async def serve(port: int, response: bytes) -> None:
    async def predict(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(predict)  # no (de)serializers: bytes in, bytes out
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("tensorgate.v1.InferenceService", {"Predict": handler})]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), Path(sys.argv[2]).read_bytes()))
