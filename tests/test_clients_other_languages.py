"""The Go and TypeScript clients that `buf generate` writes under clients/ (buf.gen.yaml; protos/generate.py
checks them for drift): each compiles with the pinned toolchain (Debian's Go and Go gRPC packages, offline in
GOPATH mode; npm's tsc), and its example program predicts a real MNIST test image against the running server,
with the same answer as tensorgate's Python client.

A missing toolchain fails these tests with the package to install (`make system-packages` / `npm ci`): they
are never skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tensorgate.clients.client import TensorgateClient
from tensorgate.clients.datasets import MnistData

from conftest import ServerProcess, mnist_inputs

ROOT = Path(__file__).resolve().parent.parent
GO_CLIENT = ROOT / "clients" / "go"
TS_CLIENT = ROOT / "clients" / "ts"
GO_IMPORT_PATH = "tensorgate/clients/go"  # the go_package prefix that buf.gen.yaml gives tensorgate.v1
DEBIAN_GOCODE = Path("/usr/share/gocode/src")
# Go packages the client builds against, and the Debian package that ships each.
GO_DEPENDENCIES = {
    "google.golang.org/grpc": "golang-google-grpc-dev",
    "google.golang.org/protobuf/runtime/protoimpl": "golang-google-protobuf-dev",
    "google.golang.org/genproto/googleapis/rpc/status": "golang-google-genproto-dev",
    "google.golang.org/genproto/googleapis/api/annotations": "golang-google-genproto-dev",
    # gRPC's codec marshals through github.com/golang/protobuf: v1.5 (backed by APIv2), not v1.3.
    "github.com/golang/protobuf/proto/registry.go": "golang-github-golang-protobuf-1-5-dev",
}
IMAGE_INDEX = 0  # the first MNIST test image (a 7)


def _tool(name: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: {install}")
    return path


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 600) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def digit(mnist: MnistData, server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A test image as a file of raw little-endian float32 values ([1, 28, 28], row-major), and the scores that
    tensorgate's Python client gets for it."""
    x = mnist_inputs(mnist.x_test[IMAGE_INDEX : IMAGE_INDEX + 1])
    path = tmp_path_factory.mktemp("digit") / "digit.f32"
    path.write_bytes(x.astype("<f4").tobytes())
    with TensorgateClient(server.target) as client:
        scores = client.predict("mnist", x)
    assert scores.shape == (1, 10)
    return path, scores


def _assert_same_answer(stdout: str, expected: np.ndarray) -> None:
    answer: dict[str, Any] = json.loads(stdout)
    assert answer["model"] == "mnist"
    assert answer["version"].isdigit()
    assert answer["classes"] == [int(expected[0].argmax())]
    np.testing.assert_allclose(np.asarray(answer["scores"], np.float32), expected, rtol=1e-6, atol=1e-7)


def test_go_client_builds_and_predicts(server: ServerProcess, digit: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    go = _tool("go", "apt-get install golang-go (make system-packages)")
    gofmt = _tool("gofmt", "apt-get install golang-go (make system-packages)")
    missing = sorted({pkg for path, pkg in GO_DEPENDENCIES.items() if not (DEBIAN_GOCODE / path).exists()})
    if missing:
        pytest.fail(f"missing from {DEBIAN_GOCODE}: apt-get install {' '.join(missing)} (make system-packages)")
    # GOPATH mode against Debian's packages: no module download, no network. The client sits at its import path
    # in a throwaway GOPATH in front of /usr/share/gocode.
    gopath = tmp_path / "gopath"
    package_dir = gopath / "src" / GO_IMPORT_PATH
    shutil.copytree(GO_CLIENT, package_dir)
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{DEBIAN_GOCODE.parent}",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    if not (os.environ.get("GOCACHE") or os.environ.get("XDG_CACHE_HOME") or os.environ.get("HOME")):
        env["GOCACHE"] = str(tmp_path / "gocache")
    assert _run([gofmt, "-l", "."], package_dir) == "", "gofmt would change these files"
    _run([go, "vet", "./..."], package_dir, env)
    binary = tmp_path / "predict"
    _run([go, "build", "-o", str(binary), "./cmd/predict"], package_dir, env)

    image, expected = digit
    stdout = _run([str(binary), "-target", server.target, "-image", str(image)], tmp_path, timeout_s=60)
    _assert_same_answer(stdout, expected)


def test_typescript_client_compiles_and_predicts(
    server: ServerProcess, digit: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    node = _tool("node", "apt-get install nodejs npm (Node 20 or newer)")
    tsc = ROOT / "node_modules" / ".bin" / "tsc"
    for path in (tsc, ROOT / "node_modules" / "@connectrpc" / "connect-node"):
        if not path.exists():
            pytest.fail(f"{path.relative_to(ROOT)} not found: run `npm ci` (package-lock.json pins it)")
    out_dir = tmp_path / "ts"
    _run([str(tsc), "-p", str(TS_CLIENT), "--outDir", str(out_dir)], ROOT)
    # The compiled program imports @bufbuild/protobuf and @connectrpc/*: let Node find the project's node_modules.
    (tmp_path / "node_modules").symlink_to(ROOT / "node_modules", target_is_directory=True)

    image, expected = digit
    stdout = _run([node, str(out_dir / "predict.js"), server.target, str(image)], tmp_path, timeout_s=60)
    _assert_same_answer(stdout, expected)
