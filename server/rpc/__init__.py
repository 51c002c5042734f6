"""gRPC surface: the call pipeline, error mapping, proto conversion and the servicers."""
