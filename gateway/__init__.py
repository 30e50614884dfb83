"""Envoy front of tensorgate: the config renderer, the descriptor set, the OpenAPI document and the docs page."""

from pathlib import Path

GATEWAY_DIR = Path(__file__).resolve().parent
DESCRIPTOR_SET = GATEWAY_DIR / "tensorgate.binpb"
OPENAPI = GATEWAY_DIR / "openapi.json"
DOCS_DIR = GATEWAY_DIR / "docs"
