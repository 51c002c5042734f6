"""gRPC transport: servicers, the call pipeline (errors, auth, logs), background tasks."""
