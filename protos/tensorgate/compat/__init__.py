"""Protocols of other model servers that tensorgate also speaks, vendored from upstream (see protos/generate.py)."""
