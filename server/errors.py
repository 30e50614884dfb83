"""Domain errors of the serving path, each bound to the gRPC status it maps to.

Handlers raise these; one place (``grpc_services``) turns them into gRPC status
codes, and Envoy maps the codes to HTTP statuses.
"""

from __future__ import annotations

import grpc

QUOTE_LIMIT = 200  # characters of caller-supplied text an error message repeats
MAX_MESSAGE_LENGTH = 1000  # characters of a status message


def quote(text: str) -> str:
    """``repr`` of caller-supplied text for an error message, cut to ``QUOTE_LIMIT`` characters.

    Messages travel back in ``grpc-message`` and again in ``grpc-status-details-bin``: an 8 KiB name echoed
    whole would push the trailers past a client's metadata limit, and the caller would see RESOURCE_EXHAUSTED
    instead of the answer to its mistake.
    """
    if len(text) <= QUOTE_LIMIT:
        return repr(text)
    return f"{text[:QUOTE_LIMIT]!r}... ({len(text)} characters)"


class ServingError(Exception):
    """Base class: a request could not be served. ``code`` is the gRPC status for it.

    Its text is the status message, cut to ``MAX_MESSAGE_LENGTH`` characters: however many of a caller's
    names a message lists, the trailers that carry it stay small.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __str__(self) -> str:
        text = super().__str__()
        return text if len(text) <= MAX_MESSAGE_LENGTH else text[:MAX_MESSAGE_LENGTH] + "... (cut)"


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


class ModelLoadError(Exception):
    """A version directory could not be loaded or warmed up; the message says why (reported in the model's status,
    never to a caller of a request)."""
