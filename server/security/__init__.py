"""Who may call: bearer-token authentication, the role policy, the per-call principal, TLS."""
