"""The two messages of ``grpc.health.v1`` (the standard gRPC health check the server answers), built in a
descriptor pool of their own: the client needs no grpcio-health-checking, a server package, and never clashes
with another copy of ``grpc/health/v1/health.proto`` registered in the same process."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

CHECK = "/grpc.health.v1.Health/Check"
SERVING = 1  # HealthCheckResponse.ServingStatus.SERVING
# The server reports its model service SERVING as soon as it listens, and "" (the server as a whole) once a model
# version can serve: liveness and readiness.
LIVE_SERVICE = "tensorgate.v1.ModelService"
_PACKAGE = "grpc.health.v1"
_STATUSES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


def _message_classes() -> tuple[type[Message], type[Message]]:
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="grpc/health/v1/health.proto", package=_PACKAGE, syntax="proto3")
    request = file.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    response = file.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(_STATUSES):
        status.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=field.TYPE_ENUM,
        type_name=f".{_PACKAGE}.HealthCheckResponse.ServingStatus",
        label=field.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.HealthCheckRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.HealthCheckResponse")),
    )


HealthCheckRequest, HealthCheckResponse = _message_classes()


def request(service: str) -> bytes:
    """A serialized check of ``service`` ("" = the server as a whole)."""
    return bytes(HealthCheckRequest(service=service).SerializeToString())  # type: ignore[call-arg]


def serving(response: bytes) -> bool:
    """Whether a serialized answer says SERVING."""
    return bool(HealthCheckResponse.FromString(response).status == SERVING)  # type: ignore[attr-defined]
