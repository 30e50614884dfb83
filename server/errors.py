"""Domain errors of the serving path, each bound to the gRPC status it maps to.

Handlers raise these; one place (``grpc_services``) turns them into gRPC status
codes, and Envoy maps the codes to HTTP statuses.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base class: a request could not be served. ``code`` is the gRPC status for it."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgumentError(ServingError):
    """The request does not match the model's signature or the server's limits."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(ServingError):
    """The named model or version does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class UnavailableError(ServingError):
    """The model exists but no version can serve right now (loading or failed); retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhaustedError(ServingError):
    """The server is overloaded (a full queue); the caller should retry after ``retry_after_s``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimitedError(ResourceExhaustedError):
    """The caller went over its own request rate; other callers are not affected."""


class DeadlineExceededError(ServingError):
    """The caller's deadline passed before the model ran."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnauthenticatedError(ServingError):
    """No credentials, or credentials the server does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(ServingError):
    """Known caller without the scope the call needs."""

    code = grpc.StatusCode.PERMISSION_DENIED
