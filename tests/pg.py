"""Real PostgreSQL for tests: DATABASE_URL when set, else the embedded server.

A template database is migrated once per session; each test gets a fresh copy
(``CREATE DATABASE … TEMPLATE``), so tests are isolated and cheap.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from storage.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


def admin_url() -> str:
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return url
    from server.ops import embedded_db

    _, uri = embedded_db.start(ROOT / ".data", name="pg-test")
    return uri


def with_db(url: str, dbname: str) -> str:
    return make_conninfo(url, dbname=dbname)


class DatabaseFactory:
    def __init__(self) -> None:
        self.admin = admin_url()
        self.prefix = f"pa_test_{os.getpid()}"
        self.template = f"{self.prefix}_tmpl"
        self._created: list[str] = []

    def _exec(self, sql: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(sql)

    def setup_template(self) -> None:
        self._exec(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        self._exec(f'CREATE DATABASE "{self.template}"')
        asyncio.run(migrate(with_db(self.admin, self.template)))

    def create(self) -> str:
        name = f"{self.prefix}_{next(_counter)}"
        self._exec(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self._created.append(name)
        return with_db(self.admin, name)

    def create_empty(self) -> str:
        name = f"{self.prefix}_{next(_counter)}"
        self._exec(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return with_db(self.admin, name)

    def drop(self, conninfo: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(conninfo)["dbname"]
        self._exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._created:
            self._created.remove(name)

    def teardown(self) -> None:
        for name in list(self._created):
            self._exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._exec(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
