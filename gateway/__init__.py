"""Envoy front of tensorgate: the config template, the descriptor set, the OpenAPI document and the docs page."""

from pathlib import Path

GATEWAY_DIR = Path(__file__).resolve().parent
ENVOY_TEMPLATE = GATEWAY_DIR / "envoy.yaml.tmpl"
DESCRIPTOR_SET = GATEWAY_DIR / "tensorgate.binpb"
OPENAPI = GATEWAY_DIR / "openapi.json"
DOCS_DIR = GATEWAY_DIR / "docs"
