"""Operations: metrics, logging, worker processes, the health prober, embedded PostgreSQL."""
