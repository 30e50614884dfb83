"""`docker run -p 8500:8500 -p 8080:8080 -v $PWD/models:/models IMAGE`, run for real without building the image:
`tensorgate serve` (the image's entrypoint) with exactly the variables the server image sets, a temporary
directory standing for /models and, where a test binds ports, loopback instead of every interface."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData

from conftest import CLI, ROOT, mnist_inputs
from support.dockerfiles import configuration_variables, instructions
from support.processes import Stack, start_stack

IMAGE = ROOT / "deploy" / "docker" / "server.Dockerfile"


def container_environment(models: Path, **overrides: str) -> dict[str, str]:
    """The image's configuration variables, with ``models`` standing for /models and loopback for every interface
    (tests bind 127.0.0.1 only)."""
    environ = configuration_variables(IMAGE)
    assert environ["MODEL_BASE_PATH"] == "/models" and environ["TENSORGATE_HOST"] == "0.0.0.0", environ
    return {**environ, "MODEL_BASE_PATH": str(models), "TENSORGATE_HOST": "127.0.0.1", **overrides}


@pytest.fixture(scope="module")
def models(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory a user mounts at /models: two models."""
    root = tmp_path_factory.mktemp("models")
    for model in ("mnist", "scorer"):
        shutil.copytree(repository / model, root / model)
    return root


@pytest.fixture()
def container(models: Path, tmp_path: Path) -> Iterator[Stack]:
    """The container's server and Envoy, configured by the image's environment alone (no --config, no
    --model-repository)."""
    stack = start_stack(None, tmp_path / "stack.log", gateway=True, environment=container_environment(models))
    yield stack
    assert stack.stop() == 0, stack.log_path.read_text()[-5000:]


def test_the_image_environment_serves_every_mounted_model_over_grpc_and_rest(
    container: Stack, mnist: MnistData
) -> None:
    x = mnist_inputs(mnist.x_test[:200])
    with TensorgateClient(f"127.0.0.1:{container.port}") as client:
        assert sorted(m.name for m in client.list_models()) == ["mnist", "scorer"]
        answers = client.predict("mnist", x)
    assert (answers.argmax(1) == mnist.y_test[:200]).mean() >= 0.9
    tensor = {"dtype": "DATA_TYPE_FLOAT32", "shape": [2, 28, 28], "floatValues": x[:2].ravel().tolist()}
    body = {"inputs": {"keras_tensor": tensor}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{container.gateway_port}/v1/models/mnist:predict",
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        output = json.loads(response.read())["outputs"]["output_0"]
    rest = np.array(output["floatValues"], np.float32).reshape(2, 10)
    np.testing.assert_allclose(rest, answers[:2], rtol=1e-6)
    # TF Serving's REST API on the server's own port, as `-p 8501:8501` exposes it.
    status_url = f"http://127.0.0.1:{container.tfserving_rest_port}/v1/models/mnist"
    with urllib.request.urlopen(status_url, timeout=60) as response:
        states = [v["state"] for v in json.loads(response.read())["model_version_status"]]
    assert states == ["AVAILABLE"]


def test_model_name_serves_one_model_of_the_mounted_repository(models: Path, tmp_path: Path) -> None:
    environ = container_environment(models, MODEL_NAME="mnist")
    stack = start_stack(None, tmp_path / "server.log", environment=environ)
    try:
        with TensorgateClient(f"127.0.0.1:{stack.port}") as client:
            assert [m.name for m in client.list_models()] == ["mnist"]
            with pytest.raises(grpc.RpcError) as error:
                client.model_status("scorer")
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        assert stack.stop() == 0, stack.log_path.read_text()[-5000:]


def test_the_image_logs_its_plaintext_opt_in_and_refuses_a_missing_model(tmp_path: Path) -> None:
    """With the image's own host (every interface) and no TLS, serve warns before anything else, naming the
    plaintext listeners; here it then stops at a MODEL_NAME that is not in the repository, so nothing binds
    beyond loopback."""
    (entrypoint, command) = json.loads(dict(instructions(IMAGE))["ENTRYPOINT"])
    assert (entrypoint, command) == ("tensorgate", "serve")
    environ = {**configuration_variables(IMAGE), "MODEL_BASE_PATH": str(tmp_path), "MODEL_NAME": "absent"}
    result = subprocess.run(
        [*CLI, command, "--log-format", "json"], env=environ, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    warnings = [json.loads(line) for line in result.stderr.splitlines() if "allow_plaintext" in line]
    assert [(w["level"], w["host"], w["listeners"]) for w in warnings] == [
        ("WARNING", "0.0.0.0", ["tls", "gateway_tls"])
    ], result.stderr
    assert "model absent (model_name) is not a directory of" in result.stderr
