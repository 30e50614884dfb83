"""The Python clients against a real server: the synchronous client and the asyncio one pass the same tests
(each test runs once per client; the asyncio client runs on an event loop of its own thread, driven through
``Blocking``)."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from tensorgate.clients.aio import AsyncTensorgateClient
from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData

from conftest import KeyedServer, ServerProcess, free_port, mnist_inputs

T = TypeVar("T")


class Blocking:
    """An AsyncTensorgateClient called like the synchronous one: each coroutine runs to its end, each async
    iterator is iterated, on the event loop of a thread of its own (where the client and its channels live)."""

    def __init__(self, target: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def create() -> AsyncTensorgateClient:
            return AsyncTensorgateClient(target, **options)

        self._client = self._run(create())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        if inspect.isasyncgenfunction(method):
            return lambda *args, **kwargs: self._iterate(method(*args, **kwargs))
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))

    def _iterate(self, iterator: Any) -> Iterator[Any]:
        async def step() -> tuple[bool, Any]:
            try:
                return True, await anext(iterator)
            except StopAsyncIteration:
                return False, None

        while True:
            more, item = self._run(step())
            if not more:
                return
            yield item

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


MakeClient = Callable[..., Any]


@pytest.fixture(params=["sync", "asyncio"])
def make_client(request: pytest.FixtureRequest) -> Iterator[MakeClient]:
    """Opens clients of one kind (``TensorgateClient(target, **options)`` or its asyncio twin); closes them after."""
    opened: list[Any] = []

    def make(target: str, **options: Any) -> Any:
        client = TensorgateClient(target, **options) if request.param == "sync" else Blocking(target, **options)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


def test_health_and_model_state(server: ServerProcess, make_client: MakeClient) -> None:
    client = make_client(server.target)
    assert client.server_live() and client.server_ready()
    assert client.model_ready("mnist") and client.model_ready("mnist", "1")
    assert not client.model_ready("broken") and not client.model_ready("nope")
    assert {"mnist", "scorer", "broken", "empty"} <= {model.name for model in client.list_models()}
    assert [version.version for version in client.model_status("mnist").versions] == ["1"]
    metadata = client.model_metadata("mnist")
    assert [spec.name for spec in metadata.inputs] == ["keras_tensor"] and list(metadata.inputs[0].shape) == [
        -1,
        28,
        28,
    ]

    nobody = make_client(f"127.0.0.1:{free_port()}", timeout_s=5)
    assert not nobody.server_live() and not nobody.server_ready()


def test_predict_and_stream_over_several_channels(
    server: ServerProcess, make_client: MakeClient, mnist: MnistData
) -> None:
    client = make_client(server.target, channels=3)
    x = mnist_inputs(mnist.x_test[:300])
    predicted = np.concatenate([client.predict("mnist", x[i : i + 50]) for i in range(0, 300, 50)])
    assert predicted.shape == (300, 10)
    assert np.mean(predicted.argmax(axis=1) == mnist.y_test[:300]) > 0.9
    streamed = np.stack(list(client.stream_predict("mnist", iter(x), batch_size=64)))
    np.testing.assert_allclose(streamed, predicted, rtol=1e-5, atol=1e-6)
    batches = list(client.stream_predict_batches("mnist", ({"keras_tensor": x[i : i + 100]} for i in (0, 100, 200))))
    by_batch = np.concatenate([next(iter(outputs.values())) for outputs in batches])
    np.testing.assert_allclose(by_batch, predicted, rtol=1e-5, atol=1e-6)
    tensors = client.predict_tensors("mnist", {"keras_tensor": x[:2]}, "1")
    np.testing.assert_allclose(next(iter(tensors.values())), predicted[:2], rtol=1e-5, atol=1e-6)


def test_admin_calls_with_per_call_metadata_and_timeout(
    keyed_server: KeyedServer, make_client: MakeClient, mnist: MnistData
) -> None:
    """The client holds no key: each call brings its own in ``metadata``."""
    target, admin, reader = keyed_server.server.target, keyed_server.admin_key, keyed_server.reader_key
    client = make_client(target)
    as_admin, as_reader = [("x-api-key", admin)], [("x-api-key", reader)]
    with pytest.raises(grpc.RpcError) as anonymous:
        client.model_status("mnist")
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as denied:
        client.unload_model("mnist", metadata=as_reader)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    try:
        unloaded = client.unload_model("mnist", "1", metadata=as_admin)
        assert unloaded.name == "mnist" and not client.model_ready("mnist", metadata=as_reader)
        assert client.load_model("mnist", "1", metadata=as_admin).versions[0].state == 2  # AVAILABLE
        assert dict(client.set_model_labels("mnist", {"stable": 1}, metadata=as_admin).labels) == {"stable": 1}
        assert client.predict("mnist", mnist_inputs(mnist.x_test[:1]), "stable", metadata=as_reader).shape == (1, 10)
        with pytest.raises(grpc.RpcError) as unknown:
            client.set_model_labels("mnist", {"canary": 9}, metadata=as_admin)
        assert unknown.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert dict(client.model_status("mnist", metadata=as_reader).labels) == {"stable": 1}
        assert not client.set_model_labels("mnist", {}, metadata=as_admin).labels
        assert client.model_ready("mnist", metadata=as_reader)
        with pytest.raises(grpc.RpcError) as late:
            client.predict("mnist", mnist_inputs(mnist.x_test[:1]), timeout_s=1e-6, metadata=as_reader)
        assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        client.reload_model("mnist", metadata=as_admin)
