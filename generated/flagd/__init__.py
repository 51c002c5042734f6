"""flagd's public protocols (evaluation v1/v2, sync v1), generated from protos/flagd/."""
