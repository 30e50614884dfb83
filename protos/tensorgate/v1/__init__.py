"""Generated protobuf messages and gRPC stubs of the tensorgate.v1 API (see protos/generate.py)."""
