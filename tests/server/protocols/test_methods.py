"""The method table against the services' descriptors: every method served is in it, with its kind, and the public
ones are exactly the health checks."""

from __future__ import annotations

import json
import subprocess
import sys

from tensorgate.server.protocols import methods
from tensorgate.server.security.principal import ADMIN, SCOPES

# The services as their generated modules describe them, read in a process of its own: the suite's own tests load
# tritonclient's and tensorflow-serving-api's copies of the same protos, and two copies clash in one process.
DESCRIBE = """
import json
from tensorgate.compat.kserve_v2 import grpc_service_pb2
from tensorgate.compat.tfserving import model_service_pb2 as tfs_models, prediction_service_pb2
from tensorgate.v1 import inference_service_pb2, model_service_pb2
services = [
    inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"],
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
    tfs_models.DESCRIPTOR.services_by_name["ModelService"],
]
print(json.dumps({
    f"/{s.full_name}/{m.name}": [m.client_streaming, m.server_streaming] for s in services for m in s.methods
}))
"""


def described_methods() -> dict[str, list[bool]]:
    """gRPC path → [client streaming, server streaming] of every method of the five services."""
    result = subprocess.run([sys.executable, "-c", DESCRIBE], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def test_the_table_holds_every_method_of_every_service_once() -> None:
    described = described_methods()
    assert {m.path for m in methods.METHODS} == set(described)
    assert len({m.path for m in methods.METHODS}) == len(methods.METHODS)
    assert len({m.name for m in methods.METHODS}) == len(methods.METHODS), "span and metric names are unique"
    for entry in methods.METHODS:
        assert described[entry.path] == [entry.streams, entry.streams], entry.path
        assert methods.method(entry.service, entry.rpc) is entry


def test_scopes_public_methods_and_admin_methods() -> None:
    assert all(m.scope is None or m.scope in SCOPES for m in methods.METHODS)
    assert {m.rpc for m in methods.METHODS if m.scope is None} == {"ServerLive", "ServerReady"}
    assert {m.rpc for m in methods.METHODS if m.scope == ADMIN} == {
        "LoadModel",
        "UnloadModel",
        "ReloadModel",
        "SetModelLabels",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }
    assert set(methods.public_paths()) == {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/v2/health/live",
        "/v2/health/ready",
    }
