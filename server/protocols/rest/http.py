"""The REST corridor: what every HTTP request of every REST protocol goes through, as ``rpc`` is for gRPC.

A REST protocol (``rest.kserve_v2``, ``rest.tfserving``) is a table of ``Route``: an HTTP method, a path, the name
its spans and metrics carry, a scope, and a handler that maps JSON (or binary) bodies to NumPy and back. For each
request this module authorizes the caller (the same ``Authenticator`` and scopes as gRPC: the request headers are
the metadata), opens the server span, gives the handler a ``rpc.Call`` with the server's request timeout, turns
any failure into its answer (``rpc.failure`` decides the gRPC code, ``HTTP_STATUS`` the HTTP status, the
protocol's body is ``{"error": message}``, and overload carries Retry-After), and counts the request under the
model and version that answered, with the same metrics as gRPC.

The stack is aiohttp (its ``AppRunner`` and ``TCPSite`` run on the server's own asyncio loop, next to grpc.aio,
so REST calls share the one data plane and batcher) with orjson for JSON.
"""

from __future__ import annotations

import logging
import math
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import trace

from tensorgate.server.errors import InvalidArgumentError, ServingError
from tensorgate.server.observability.tracing import end_http_span, http_server_span, set_model, start_server_span
from tensorgate.server.protocols.rpc import Call, Corridor, failure, record

# gRPC status → HTTP status, as Envoy maps them (Grpc::Utility::grpcToHttpStatus), so that a REST caller gets the
# same status from the server's REST port as from a gRPC method behind Envoy.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
JSON = "application/json"
MAX_LOGGED_CHARS = 200


class _CallerMistakes(logging.Filter):
    """aiohttp answers a request it cannot parse (a request line or header over its limits, a malformed one) with
    400 and logs it with a traceback at ERROR: a caller's mistake, it is logged here as one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and 400 <= error.code < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed HTTP request refused: %s", (str(error.message)[:MAX_LOGGED_CHARS],)
            record.exc_info, record.exc_text = None, None
        return True


# The logger of the REST ports' HTTP layer (aiohttp's own messages).
http_log = logging.getLogger("tensorgate.rest.http")
http_log.addFilter(_CallerMistakes())


class UnimplementedError(ServingError):
    """A request for something the protocol defines and this server does not do (HTTP 501)."""

    code = grpc.StatusCode.UNIMPLEMENTED


Handler = Callable[[web.Request, Call], Awaitable[web.Response]]


@dataclass(frozen=True)
class Route:
    """One REST endpoint: ``method`` and aiohttp ``path`` (``{name}`` or ``{name:regex}`` parts), the ``name``
    its spans and metrics carry, the scope a caller needs (None: public), and its handler."""

    method: str
    path: str
    name: str
    scope: str | None
    handler: Handler


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``body`` as JSON; NumPy arrays in it are written by orjson directly."""
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status, content_type=JSON, headers=headers
    )


def parse_json(data: bytes | memoryview, what: str) -> dict[str, Any]:
    """The JSON object in ``data``; INVALID_ARGUMENT naming ``what`` when it is not one."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgumentError(f"{what} must be a JSON object")
    return body


class RestSide:
    """The routes of one REST port (served at ``host:port``), through the corridor."""

    def __init__(self, corridor: Corridor, routes: Sequence[Route], max_body_bytes: int, host: str, port: int) -> None:
        self._corridor = corridor
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors_as_json])
        for route in routes:
            self.app.router.add_route(route.method, route.path, self._handler(route, host, port))

    def _handler(self, route: Route, host: str, port: int) -> Callable[[web.Request], Awaitable[web.Response]]:
        # The span's route is the path template without its parameters' patterns: /v2/models/{model}{version}/infer.
        span_name, attributes = http_server_span(
            route.method, re.sub(r"\{(\w+):[^{}]*\}", r"{\1}", route.path), host, port
        )

        async def handle(request: web.Request) -> web.Response:
            headers = [(name.lower(), value) for name, value in request.headers.items()]
            span = start_server_span(span_name, lambda: headers, attributes)
            if span is None:
                return await self._serve(route, request, headers, None)
            # The status is the corridor's (end_http_span), not the SDK's reading of an exception.
            with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
                return await self._serve(route, request, headers, span)

        return handle

    async def _serve(
        self, route: Route, request: web.Request, headers: list[tuple[str, str]], span: trace.Span | None
    ) -> web.Response:
        started, code, message = time.perf_counter(), grpc.StatusCode.OK, ""
        corridor = self._corridor
        call = Call(corridor, corridor.limits.time_left(None), None)
        rejection, status = "", 200
        try:
            call.principal = corridor.authorize(headers, _peer(request), route.scope, 1)
            response = await route.handler(request, call)
            status = response.status
            return response
        except web.HTTPException as exc:  # the request body over the size limit
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.status == 413 else grpc.StatusCode.INVALID_ARGUMENT
            status, message = exc.status, exc.text or exc.reason
            return json_response({"error": message}, status)
        except Exception as exc:
            failed = failure(exc, route.name)
            code, rejection, message, status = failed.code, failed.rejection, failed.message, HTTP_STATUS[failed.code]
            headers_out = None
            if failed.retry_after_s is not None:
                headers_out = {"Retry-After": str(max(1, math.ceil(failed.retry_after_s)))}
            return json_response({"error": message}, status, headers_out)
        finally:
            if span is not None:
                set_model(span, call.model_label, call.version_label)
                end_http_span(span, status, message)
            record(call, route.name, code, started, rejection)


@web.middleware
async def _errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own refusals (no such path, a method the path does not take) with the ``{"error": ...}`` body
    every REST protocol here uses."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response({"error": f"{exc.reason}: {request.method} {request.path}"}, exc.status)


def _peer(request: web.Request) -> str:
    """The caller's address as gRPC writes a peer (what ``Authenticator`` reads)."""
    host = request.remote or ""
    return f"ipv6:[{host}]:0" if ":" in host else f"ipv4:{host}:0"


async def start_site(
    side: RestSide, host: str, port: int, ssl_context: ssl.SSLContext | None, reuse_port: bool, grace_s: float
) -> web.AppRunner:
    """Serve ``side`` on ``host:port`` (TLS with ``ssl_context``, SO_REUSEPORT for a replica's workers); the
    runner's ``cleanup`` stops taking requests and lets those in flight finish within ``grace_s``."""
    runner = web.AppRunner(side.app, access_log=None, handle_signals=False, shutdown_timeout=grace_s, logger=http_log)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port or None)
    await site.start()
    return runner
