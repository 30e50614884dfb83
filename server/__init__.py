"""tensorgate model server: configuration, model repository and runtime, gRPC services."""
