"""Hot reload under load: versions appear (atomically or file by file), a broken one is dropped in,
labels move, an old version is removed, and no request fails; admin RPCs; memory after unloads."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData
from tensorgate.v1 import codec, inference_service_pb2_grpc, model_service_pb2_grpc
from tensorgate.v1.inference_service_pb2 import PredictRequest, StreamPredictRequest
from tensorgate.v1.model_service_pb2 import (
    GetModelStatusRequest,
    LoadModelRequest,
    ModelVersionState,
    ReloadModelRequest,
    SetModelLabelsRequest,
    UnloadModelRequest,
)

from conftest import ServerProcess, mnist_inputs, start_server

AVAILABLE = ModelVersionState.MODEL_VERSION_STATE_AVAILABLE
FAILED = ModelVersionState.MODEL_VERSION_STATE_FAILED


@pytest.fixture(scope="module")
def lifecycle(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """digits (MNIST, latest 2 versions served) and scorer, watched every 0.2 s."""
    root = tmp_path_factory.mktemp("lifecycle-repository")
    shutil.copytree(repository / "mnist" / "1", root / "digits" / "1")
    (root / "digits" / "model.toml").write_text('version_policy = "latest"\nlatest_count = 2\n')
    shutil.copytree(repository / "scorer", root / "scorer")
    (root / "scorer" / "model.toml").write_text('version_policy = "all"\n[batching]\nmax_batch_size = 8\n')
    server = start_server(root, tmp_path_factory.mktemp("lifecycle") / "server.log", "--poll-interval-s", "0.2")
    yield server, root
    assert server.stop() == 0, server.log()[-5000:]


def wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def states(client: TensorgateClient, model: str = "digits") -> dict[str, int]:
    return {v.version: v.state for v in client.model_status(model).versions}


def test_versions_switch_under_load_without_a_failed_request(
    lifecycle: tuple[ServerProcess, Path], mnist: MnistData, repository: Path
) -> None:
    server, root = lifecycle
    source = repository / "mnist" / "1"
    x = mnist_inputs(mnist.x_test[:32])
    stop = threading.Event()
    answers: list[tuple[str, str]] = []  # (caller, version) of every answer
    failures: list[str] = []

    def unary_caller(caller: str) -> None:
        with grpc.insecure_channel(server.target) as channel:
            stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
            while not stop.is_set():
                request = PredictRequest(model="digits", version="stable" if caller in labelled else "")
                request.inputs["keras_tensor"].CopyFrom(codec.encode(x[:4]))
                try:
                    answers.append((caller, stub.Predict(request, timeout=30).version))
                except grpc.RpcError as exc:
                    failures.append(f"unary {caller}: {exc.code().name}: {exc.details()}")

    def stream_caller() -> None:
        def requests() -> Iterator[StreamPredictRequest]:
            for i in range(0, 32, 8):
                request = StreamPredictRequest(id=str(i), model="digits")
                request.inputs["keras_tensor"].CopyFrom(codec.encode(x[i : i + 8]))
                yield request

        with grpc.insecure_channel(server.target) as channel:
            stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    for response in stub.StreamPredict(requests(), timeout=30):
                        if response.HasField("error"):
                            failures.append(f"stream item: {response.error.message}")
                        answers.append(("stream", response.version))
                except grpc.RpcError as exc:
                    failures.append(f"stream: {exc.code().name}: {exc.details()}")

    labelled: set[str] = set()
    threads = [threading.Thread(target=unary_caller, args=(caller,)) for caller in ("a", "b", "stable")]
    threads.append(threading.Thread(target=stream_caller))
    for thread in threads:
        thread.start()
    try:
        with TensorgateClient(server.target) as client:
            time.sleep(1)
            # Version 2, written atomically (built aside, renamed into place).
            shutil.copytree(source, root / "digits" / ".incoming-2")
            (root / "digits" / ".incoming-2").rename(root / "digits" / "2")
            wait_for(lambda: states(client) == {"2": AVAILABLE, "1": AVAILABLE})
            # Version 3, written file by file: the graph file last, so it counts only once complete.
            (root / "digits" / "3").mkdir()
            shutil.copytree(source / "variables", root / "digits" / "3" / "variables")
            time.sleep(1)
            assert "3" not in states(client)
            shutil.copyfile(source / "saved_model.pb", root / "digits" / "3" / "saved_model.pb")
            wait_for(lambda: states(client) == {"3": AVAILABLE, "2": AVAILABLE})
            # A label moves: callers naming "stable" follow it.
            stub = model_service_pb2_grpc.ModelServiceStub(client._channels[0])
            stub.SetModelLabels(SetModelLabelsRequest(model="digits", labels={"stable": 2}), timeout=10)
            labelled.add("stable")
            time.sleep(1)
            stub.SetModelLabels(SetModelLabelsRequest(model="digits", labels={"stable": 3}), timeout=10)
            time.sleep(1)
            # A broken version 4 fails and replaces nothing.
            (root / "digits" / "4").mkdir()
            (root / "digits" / "4" / "saved_model.pb").write_bytes(b"broken")
            wait_for(lambda: states(client).get("4") == FAILED)
            assert states(client)["3"] == AVAILABLE
            time.sleep(1)
            # The old version 2 is removed from disk: it drains and unloads.
            shutil.rmtree(root / "digits" / "2")
            wait_for(lambda: "2" not in states(client))
            time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert failures == []
    versions = {version for _, version in answers}
    print(f"{len(answers)} answers by version: { {v: sum(1 for _, a in answers if a == v) for v in sorted(versions)} }")
    assert versions <= {"1", "2", "3"}, versions  # never the broken 4
    assert {"1", "3"} <= versions  # the switch shows in the answers
    assert {v for caller, v in answers if caller == "stable"} >= {"3"}


def test_admin_rpcs_change_nothing_on_bad_arguments(lifecycle: tuple[ServerProcess, Path]) -> None:
    server, _ = lifecycle
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        before = stub.GetModelStatus(GetModelStatusRequest(model="scorer"), timeout=10).model
        for call, request, code in [
            (stub.LoadModel, LoadModelRequest(model="scorer", version="9"), grpc.StatusCode.NOT_FOUND),
            (stub.LoadModel, LoadModelRequest(model="nope"), grpc.StatusCode.NOT_FOUND),
            (stub.UnloadModel, UnloadModelRequest(model="scorer", version="x"), grpc.StatusCode.INVALID_ARGUMENT),
            (stub.ReloadModel, ReloadModelRequest(model=""), grpc.StatusCode.INVALID_ARGUMENT),
            (
                stub.SetModelLabels,
                SetModelLabelsRequest(model="scorer", labels={"stable": 7}),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                stub.SetModelLabels,
                SetModelLabelsRequest(model="scorer", labels={"3": 1}),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]:
            with pytest.raises(grpc.RpcError) as raised:
                call(request, timeout=30)
            assert raised.value.code() == code, raised.value.details()
        assert stub.GetModelStatus(GetModelStatusRequest(model="scorer"), timeout=10).model == before


def test_unload_and_load_release_memory(lifecycle: tuple[ServerProcess, Path]) -> None:
    server, _ = lifecycle
    with grpc.insecure_channel(server.target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        status = stub.ReloadModel(ReloadModelRequest(model="scorer"), timeout=60).model
        assert [v.state for v in status.versions] == [AVAILABLE]
        rss = []
        for _ in range(8):
            unloaded = stub.UnloadModel(UnloadModelRequest(model="scorer", version="1"), timeout=60).model
            assert list(unloaded.versions) == []
            loaded = stub.LoadModel(LoadModelRequest(model="scorer", version="1"), timeout=60).model
            assert [v.state for v in loaded.versions] == [AVAILABLE]
            rss.append(server.rss_bytes() / 2**20)
    print(f"RSS after each unload+load cycle (MiB): {[round(r) for r in rss]}")
    assert rss[-1] - rss[1] < 40, rss  # no growth cycle after cycle


def test_two_models_each_with_their_own_policy_and_batcher(lifecycle: tuple[ServerProcess, Path]) -> None:
    server, _ = lifecycle
    with TensorgateClient(server.target) as client:
        models = {m.name: m for m in client.list_models()}
        assert {"digits", "scorer"} <= set(models)
        client.predict_tensors(
            "scorer",
            {
                "features": np.ones((2, 3)),
                "tag": np.array([b"a", b"b"], dtype=object),
                "counts": np.ones((2, 2), np.int32),
            },
        )
    batchers = {labels for (name, labels) in server.metrics() if name == "tensorgate_batch_size_count"}
    assert {dict(b)["model"] for b in batchers} >= {"digits", "scorer"}


def test_a_version_that_breaks_callers_is_refused(
    lifecycle: tuple[ServerProcess, Path], repository: Path, mnist: MnistData
) -> None:
    server, root = lifecycle
    with TensorgateClient(server.target) as client:
        serving = client.model_metadata("digits").version
        shutil.copytree(repository / "scorer" / "1", root / "digits" / "9")
        try:
            wait_for(lambda: states(client).get("9") == FAILED)
            error = next(v.error for v in client.model_status("digits").versions if v.version == "9")
            assert "signature change would break callers" in error and "input 'keras_tensor' removed" in error
            assert client.model_metadata("digits").version == serving
            assert client.predict("digits", mnist_inputs(mnist.x_test[:2])).shape == (2, 10)
        finally:
            shutil.rmtree(root / "digits" / "9")
        wait_for(lambda: "9" not in states(client))
