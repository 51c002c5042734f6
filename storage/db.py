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
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, LiteralString, NoReturn, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.rows import class_row

from domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
Params = Sequence[Any] | Mapping[str, Any] | None

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
    # libpq connect_timeout (whole seconds, at least 2): a host that does not answer
    # must not hold a pool slot, or a caller, for libpq's default of forever.
    connect_timeout_s: int = 3
    # Callers queued for a connection beyond this get RESOURCE_EXHAUSTED at once (0: no cap).
    max_waiting: int = 0
    # A lost connection is replaced with back-off (1 s, 2 s, ...) for this long; then the
    # pool gives up that slot and the next caller starts a fresh attempt at once. Short,
    # so service resumes within a second or two of the database coming back.
    reconnect_timeout_s: float = 2.0
    # While the database is known to be down, callers wait at most this long for a
    # connection instead of acquire_timeout_s: writes fail fast with UNAVAILABLE.
    unreachable_acquire_timeout_s: float = 0.25


# Monotonic time by which the current call must be answered, set by the call pipeline.
# Waits for a connection and statements in transactions are cut to fit inside it, so a
# busy or unreachable database gives UNAVAILABLE before the caller's deadline expires.
call_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "call_deadline", default=None
)
# Time to answer one failed call, kept per caller already queued for a connection.
_PER_WAITER_S = 0.002


def deadline_after(budget: float) -> float:
    """The ``call_deadline`` of a call that must be answered within ``budget`` seconds.

    It keeps back a fifth of the budget (50 ms to 1 s) to answer in: the server learns a
    deadline as a duration when the request arrives, so its clock runs late by the time
    the request spent queued in the client and in transit, and a burst of failures all
    due at once takes the event loop a while to send.
    """
    return time.monotonic() + budget - min(1.0, max(0.05, 0.2 * budget))


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


def session_options(settings: PoolSettings) -> str:
    """libpq ``options`` applied to every connection, pooled or not."""
    return (
        f"-c search_path=platform_admin,public"
        f" -c statement_timeout={settings.statement_timeout_ms}"
        f" -c lock_timeout={settings.lock_timeout_ms}"
        f" -c idle_in_transaction_session_timeout={settings.idle_in_transaction_timeout_ms}"
    )


# TCP keepalives notice a peer that vanished without closing the socket.
_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


async def connect_direct(
    settings: PoolSettings, *, application_name: str | None = None
) -> psycopg.AsyncConnection:
    """One autocommit connection outside the pool (LISTEN, health pings), with the pool's
    session options and timeouts; raises the driver's error (callers translate it).
    """
    extra: dict[str, Any] = {"application_name": application_name} if application_name else {}
    return await psycopg.AsyncConnection.connect(
        settings.conninfo,
        autocommit=True,
        options=session_options(settings),
        connect_timeout=max(2, settings.connect_timeout_s),
        **_KEEPALIVES,
        **extra,
    )


# The lock is taken in its own statement: in READ COMMITTED the next statement's
# snapshot is taken after the lock is held, so it sees every row the previous holder
# changed (its commit is visible before its lock is released).
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(%s)"


async def try_xact_lock(conn: psycopg.AsyncConnection, key: int) -> bool:
    """Takes the transaction-scoped advisory lock ``key`` if free; False when another has it."""
    row = await (await conn.execute(_TRY_LOCK, (key,))).fetchone()
    return bool(row and row[0])


async def fetch_one(
    conn: psycopg.AsyncConnection, row: type[R], query: LiteralString, params: Params = None
) -> R | None:
    """The first row of ``query`` as a ``row`` (a dataclass named after the columns)."""
    cur = conn.cursor(row_factory=class_row(row))
    await cur.execute(query, params)
    return await cur.fetchone()


async def fetch_all(
    conn: psycopg.AsyncConnection, row: type[R], query: LiteralString, params: Params = None
) -> list[R]:
    cur = conn.cursor(row_factory=class_row(row))
    await cur.execute(query, params)
    return await cur.fetchall()


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
    if isinstance(exc, psycopg_pool.TooManyRequests):
        return ResourceExhausted(
            "too many requests are waiting for a database connection; retry with back-off",
            reason="DB_POOL_QUEUE_FULL",
        )
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
        return Unavailable("no database connection available; retry", reason="DB_POOL_TIMEOUT")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return Unavailable("the database is unreachable; retry", reason="DB_UNAVAILABLE")
    log.exception("unexpected database error", exc_info=exc)
    return DomainError("internal error", reason="INTERNAL")


def raise_translated(exc: BaseException) -> NoReturn:
    raise translate(exc) from None


_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


def _connection_lost(exc: BaseException) -> bool:
    """The database went away (refused, dropped, shutting down), as opposed to being busy."""
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests):
        return False
    if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    state = getattr(exc, "sqlstate", None)
    # No SQLSTATE: the client lost the socket; class 08: connection exception;
    # 57P01-57P03: administrator / crash shutdown, cannot connect now.
    return state is None or state.startswith(("08", "57P"))


class Database:
    """The pool plus the two ways of using it."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        # Called after every committed transaction (server/app.py wakes the outbox sequencer:
        # a change of this process is sequenced at once instead of at the next idle poll).
        self.after_commit: Callable[[], None] | None = None
        self.pool = psycopg_pool.AsyncConnectionPool(
            settings.conninfo,
            min_size=settings.min_size,
            max_size=settings.max_size,
            timeout=settings.acquire_timeout_s,
            max_waiting=settings.max_waiting,
            reconnect_timeout=settings.reconnect_timeout_s,
            open=False,
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            kwargs={
                "autocommit": True,
                "options": session_options(settings),
                "connect_timeout": max(2, settings.connect_timeout_s),
                **_KEEPALIVES,
            },
            name="platform-admin",
        )
        # False after a connection error or a failed ping; True after a success. Only
        # shortens waits while the database is down, it never refuses a call by itself.
        self.reachable = True
        # ping() uses its own connection: a pool busy to the last connection is not a
        # database outage, and must not turn health NOT_SERVING.
        self._probe: psycopg.AsyncConnection | None = None

    def _acquire_timeout(self) -> float:
        timeout = self.settings.acquire_timeout_s
        if not self.reachable:
            timeout = min(timeout, self.settings.unreachable_acquire_timeout_s)
        deadline = call_deadline.get()
        if deadline is not None:
            # Callers queued ahead would all time out together; each one further back gives
            # up a little earlier, so the event loop answers them one after another.
            waiting = self.pool.get_stats().get("requests_waiting", 0)
            timeout = min(timeout, _left(deadline) - waiting * _PER_WAITER_S)
        # The pool refuses a zero timeout even with a connection ready.
        return max(timeout, 0.001)

    def _failed(self, exc: BaseException) -> NoReturn:
        if _connection_lost(exc):
            self.reachable = False
        raise_translated(exc)

    async def open(self, wait: bool = True, timeout: float = 30.0) -> None:
        await self.pool.open(wait=wait, timeout=timeout)

    async def close(self) -> None:
        await self.pool.close()
        if self._probe is not None:
            with contextlib.suppress(Exception):
                await self._probe.close()
            self._probe = None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[psycopg.AsyncConnection]:
        try:
            async with self.pool.connection(timeout=self._acquire_timeout()) as conn:
                yield conn
        except DomainError:
            raise
        except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
            self._failed(exc)

    async def one(self, row: type[R], query: LiteralString, params: Params = None) -> R | None:
        """:func:`fetch_one` on a connection of the pool, outside any transaction."""
        async with self.read() as conn:
            return await fetch_one(conn, row, query, params)

    async def all(self, row: type[R], query: LiteralString, params: Params = None) -> list[R]:
        async with self.read() as conn:
            return await fetch_all(conn, row, query, params)

    async def transaction(
        self, fn: Callable[[psycopg.AsyncConnection], Awaitable[T]], attempts: int = 3
    ) -> T:
        """Runs ``fn`` inside BEGIN/COMMIT; replays it on serialization failure or deadlock.

        ``fn`` may raise a DomainError to roll back with that error.
        """
        for attempt in range(1, attempts + 1):
            try:
                async with (
                    self.pool.connection(timeout=self._acquire_timeout()) as conn,
                    conn.transaction(),
                ):
                    await self._fit_to_deadline(conn)
                    result = await fn(conn)
                if self.after_commit is not None:
                    self.after_commit()
                return result
            except DomainError:
                raise
            except _RETRYABLE as exc:
                if attempt == attempts:
                    raise_translated(exc)
                await asyncio.sleep(0.005 * attempt)
            except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
                self._failed(exc)
        raise AssertionError("unreachable")

    async def _fit_to_deadline(self, conn: psycopg.AsyncConnection) -> None:
        """Cuts statement and lock timeouts to the call's remaining time (this transaction only).

        Costs a round trip only when the deadline is nearer than the configured timeouts.
        """
        deadline = call_deadline.get()
        if deadline is None:
            return
        left_ms = max(int(_left(deadline) * 1000), 1)
        statement_ms = self.settings.statement_timeout_ms
        lock_ms = self.settings.lock_timeout_ms
        if left_ms >= max(statement_ms, lock_ms):
            return
        await conn.execute(
            "SELECT set_config('statement_timeout', %s, true),"
            " set_config('lock_timeout', %s, true)",
            (str(min(statement_ms, left_ms)), str(min(lock_ms, left_ms))),
        )

    async def ping(self, timeout: float = 2.0) -> bool:
        """True when the database answers ``SELECT 1`` within ``timeout``.

        Uses one connection of its own, kept open between pings and replaced after a failure.
        """
        try:
            async with asyncio.timeout(timeout):
                if self._probe is None or self._probe.closed:
                    self._probe = await connect_direct(
                        self.settings, application_name="platform-admin-ping"
                    )
                await self._probe.execute("SELECT 1")
            self.reachable = True
            return True
        except Exception:  # any failure means "not serving"
            if self._probe is not None:
                with contextlib.suppress(Exception):
                    await self._probe.close()
                self._probe = None
            self.reachable = False
            return False
