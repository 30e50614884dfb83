"""Generated messages of the Open Inference Protocol v2 (Triton's grpc_service.proto, package ``inference``)."""
