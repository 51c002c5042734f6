"""Pure rules of the service: errors, identifiers, value typing, resolution, evaluation.

Nothing here knows about gRPC or SQL, so every rule can be tested as a plain function
and reused by both the transport (server/) and the persistence layer (storage/).
"""
