"""The method table against the services' descriptors: every method served is in it, with its kind, and the public
ones are exactly the health checks."""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor

from tensorgate.compat.kserve_v2 import grpc_service_pb2
from tensorgate.compat.tfserving import model_service_pb2 as tfs_model_service_pb2
from tensorgate.compat.tfserving import prediction_service_pb2
from tensorgate.server.protocols import methods
from tensorgate.server.security.principal import ADMIN, SCOPES
from tensorgate.v1 import inference_service_pb2, model_service_pb2

SERVICES: list[ServiceDescriptor] = [
    inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"],
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
    tfs_model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
]


def test_the_table_holds_every_method_of_every_service_once() -> None:
    described = {f"/{service.full_name}/{m.name}": m for service in SERVICES for m in service.methods}
    assert {m.path for m in methods.METHODS} == set(described)
    assert len({m.path for m in methods.METHODS}) == len(methods.METHODS)
    assert len({m.name for m in methods.METHODS}) == len(methods.METHODS), "span and metric names are unique"
    for entry in methods.METHODS:
        descriptor = described[entry.path]
        assert entry.streams == descriptor.client_streaming == descriptor.server_streaming, entry.path
        assert methods.method(entry.service, entry.rpc) is entry


def test_scopes_public_methods_and_admin_methods() -> None:
    assert all(m.scope is None or m.scope in SCOPES for m in methods.METHODS)
    assert {m.rpc for m in methods.METHODS if m.scope is None} == {"ServerLive", "ServerReady"}
    assert {m.rpc for m in methods.METHODS if m.scope == ADMIN} == {
        "LoadModel",
        "UnloadModel",
        "ReloadModel",
        "SetModelLabels",
    }
    assert set(methods.public_paths()) == {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/v2/health/live",
        "/v2/health/ready",
    }
