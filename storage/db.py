"""Connection pool and the one place where database errors become domain errors.

Every query module goes through :class:`Database`:

* ``read()`` lends an autocommit connection (a single SELECT needs no BEGIN/COMMIT,
  which costs 20-30 % of read throughput here);
* ``transaction(fn)`` runs ``fn(conn)`` in a transaction and retries it on
  serialization failures and deadlocks, which are safe to replay.

Anything psycopg raises is translated here: constraint violations into the matching
domain error, lost connections and timeouts into Unavailable. No SQL text ever reaches
a caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Unique constraints whose violation is a caller error, with the message to show.
# Query modules register theirs at import time (see register_unique_constraint).
_UNIQUE_MESSAGES: dict[str, str] = {}


def register_unique_constraint(name: str, message: str) -> None:
    _UNIQUE_MESSAGES[name] = message


@dataclass(frozen=True)
class PoolSettings:
    conninfo: str
    min_size: int = 2
    max_size: int = 10
    # How long a caller waits for a free connection before UNAVAILABLE.
    acquire_timeout_s: float = 5.0
    statement_timeout_ms: int = 5_000
    lock_timeout_ms: int = 2_000
    idle_in_transaction_timeout_ms: int = 10_000


def session_options(settings: PoolSettings) -> str:
    """libpq ``options`` applied to every connection, pooled or not."""
    return (
        f"-c search_path=platform_admin,public"
        f" -c statement_timeout={settings.statement_timeout_ms}"
        f" -c lock_timeout={settings.lock_timeout_ms}"
        f" -c idle_in_transaction_session_timeout={settings.idle_in_transaction_timeout_ms}"
    )


def translate(exc: BaseException) -> DomainError:
    """Maps a psycopg / pool exception to the domain error the caller should see."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, pg_errors.UniqueViolation):
        name = exc.diag.constraint_name or ""
        return AlreadyExists(_UNIQUE_MESSAGES.get(name, "the resource already exists"))
    if isinstance(exc, pg_errors.CheckViolation | pg_errors.NotNullViolation):
        # Validation runs before SQL; reaching here means a rule is missing in domain/.
        log.error("constraint violated past validation: %s", exc.diag.constraint_name)
        return InvalidArgument.field("request", "violates a data constraint")
    if isinstance(exc, psycopg.DataError):
        # e.g. a NUL character or an out-of-range number that slipped past validation.
        return InvalidArgument.field("request", "contains a value the database cannot store")
    if isinstance(exc, pg_errors.ForeignKeyViolation):
        return FailedPrecondition("a referenced resource no longer exists")
    if isinstance(exc, pg_errors.LockNotAvailable):
        return Unavailable("the resource is busy; retry", reason="LOCK_TIMEOUT")
    if isinstance(exc, pg_errors.QueryCanceled):
        return Unavailable("the database did not answer in time; retry", reason="DB_TIMEOUT")
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
        return Unavailable("no database connection available; retry", reason="DB_POOL_TIMEOUT")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return Unavailable("the database is unreachable; retry", reason="DB_UNAVAILABLE")
    log.exception("unexpected database error", exc_info=exc)
    return DomainError("internal error", reason="INTERNAL")


def raise_translated(exc: BaseException) -> NoReturn:
    raise translate(exc) from None


_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


class Database:
    """The pool plus the two ways of using it."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.pool = psycopg_pool.AsyncConnectionPool(
            settings.conninfo,
            min_size=settings.min_size,
            max_size=settings.max_size,
            timeout=settings.acquire_timeout_s,
            open=False,
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "options": session_options(settings)},
            name="platform-admin",
        )

    async def open(self, wait: bool = True, timeout: float = 30.0) -> None:
        await self.pool.open(wait=wait, timeout=timeout)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[psycopg.AsyncConnection]:
        try:
            async with self.pool.connection() as conn:
                yield conn
        except DomainError:
            raise
        except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
            raise_translated(exc)

    async def transaction(
        self, fn: Callable[[psycopg.AsyncConnection], Awaitable[T]], attempts: int = 3
    ) -> T:
        """Runs ``fn`` inside BEGIN/COMMIT; replays it on serialization failure or deadlock.

        ``fn`` may raise a DomainError to roll back with that error.
        """
        for attempt in range(1, attempts + 1):
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    return await fn(conn)
            except DomainError:
                raise
            except _RETRYABLE as exc:
                if attempt == attempts:
                    raise_translated(exc)
                await asyncio.sleep(0.005 * attempt)
            except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
                raise_translated(exc)
        raise AssertionError("unreachable")

    async def ping(self, timeout: float = 2.0) -> bool:
        """True when a pooled connection answers ``SELECT 1`` within ``timeout``."""
        try:
            async with asyncio.timeout(timeout), self.pool.connection(timeout=timeout) as conn:
                await conn.execute("SELECT 1")
            return True
        except Exception:  # any failure means "not serving"
            return False
