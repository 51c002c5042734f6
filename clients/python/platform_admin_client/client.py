"""``Client``: flags and configs answered in process, from asyncio code or plain threads.

The answers (:meth:`Client.is_enabled`, :meth:`Client.evaluate`, :meth:`Client.config`)
read the local copy and never wait: no lock, no await, no network. The copy is fed by
``WatchFlags`` and ``WatchConfigs`` on a background thread's event loop, resumed by cursor
after any disconnect (to any replica) and resynced from a snapshot when the cursor has
expired. Until the first snapshot arrives (or a ``bootstrap`` file is loaded), flags
answer their ``default`` and configs raise :class:`UnknownKey`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from platform_admin.v1 import health_pb2

from domain.config_keys import ConfigValue, Scope
from domain.flags import Evaluation
from domain.read_state import FlagState
from platform_admin_client.connection import Connection, Token, credentials_for
from platform_admin_client.core import Core, Listener, StateListener
from platform_admin_client.errors import ServerError, UnknownKey
from platform_admin_client.health import Heartbeats, record_check_result
from platform_admin_client.runner import LoopThread
from platform_admin_client.state import State
from platform_admin_client.store import LocalCopy
from platform_admin_client.watch import Backoff

log = logging.getLogger("platform_admin_client")

DEFAULT_HEARTBEAT_S = 15.0  # the server's default watch heartbeat interval


@dataclass(frozen=True, slots=True)
class Resolution:
    """An effective config value and the scope that decided it (None: the key's default)."""

    value: ConfigValue
    scope: Scope | None


class Client:
    """A local, always-answering copy of platform-admin's flags and configs.

    ``target``: ``"host:port"``, ``"dns:///name:port"`` (every address of the name), or a
    list of targets (one per replica; the streams move to the next on failure).
    ``token``: a bearer token, or a callable (sync or async) returning one per call.
    ``tls``: ``True`` for TLS with the system roots, or ``grpc.ssl_channel_credentials(...)``.
    ``heartbeat_interval_s``: the server's watch heartbeat interval; the client is STALE
    after twice that without a message. ``bootstrap``: a file written by
    :meth:`save_snapshot`, answered from at once and caught up from its cursors.
    ``loop_thread``: share one background thread between several clients.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        token: Token | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        deadline_s: float = 5.0,
        heartbeat_interval_s: float = DEFAULT_HEARTBEAT_S,
        bootstrap: str | os.PathLike[str] | None = None,
        reconnect_max_s: float = 5.0,
        refused_retry_s: float = 30.0,
        loop_thread: LoopThread | None = None,
    ) -> None:
        targets = [target] if isinstance(target, str) else list(target)
        if heartbeat_interval_s <= 0 or deadline_s <= 0:
            raise ValueError("heartbeat_interval_s and deadline_s must be positive")
        self._copy = _load(bootstrap) if bootstrap is not None else LocalCopy()
        self._deadline_s = deadline_s
        self._own_thread = loop_thread is None
        self._thread = loop_thread or LoopThread()
        self._closed = False

        async def build() -> Core:
            connection = Connection(targets, token, credentials_for(tls))
            core = Core(
                self._copy,
                connection,
                heartbeat_interval_s=heartbeat_interval_s,
                deadline_s=deadline_s,
                backoff=Backoff(max_s=reconnect_max_s, refused_s=refused_retry_s),
            )
            await core.start()
            return core

        self._core = self._thread.submit(build()).result(10)

    # --- in-process answers (any thread, never blocking) ----------------------------------

    def is_enabled(self, key: str, tenant_id: str, default: bool = False) -> bool:
        """Whether flag ``key`` is on for ``tenant_id``; ``default`` for a key never seen.

        Tenant ids are canonicalised as the server does (ULIDs, upper-case).
        """
        entry = self._copy.flags.entries.get(key)
        if entry is None:
            return default
        return entry.on is not (tenant_id.upper() in entry.flips)

    def evaluate(self, key: str, tenant_id: str) -> Evaluation:
        """The answer and its reason (DEFAULT, TENANT_ENABLED, TENANT_DISABLED, ARCHIVED).

        Raises :class:`UnknownKey` for a flag never seen.
        """
        entry = self._copy.flags.entries.get(key)
        if entry is None:
            raise UnknownKey(f"unknown flag {key!r}")
        return entry.state.evaluate(tenant_id.upper())

    def config(
        self, key: str, tenant_id: str | None = None, node_id: str | None = None
    ) -> ConfigValue:
        """The effective value: NODE > TENANT > PLATFORM > the key's default.

        Raises :class:`UnknownKey` for a key ``ListConfigKeys`` has not named.
        """
        copy = self._copy
        spec = copy.specs.get(key)
        if spec is None:
            raise UnknownKey(f"unknown config key {key!r}")
        tenant = tenant_id.upper() if tenant_id else None
        return copy.configs.read.resolve(spec, tenant, node_id or None)[0]

    def resolve(
        self, key: str, tenant_id: str | None = None, node_id: str | None = None
    ) -> Resolution:
        """Like :meth:`config`, with the scope that decided (None for the default)."""
        copy = self._copy
        spec = copy.specs.get(key)
        if spec is None:
            raise UnknownKey(f"unknown config key {key!r}")
        tenant = tenant_id.upper() if tenant_id else None
        value, scope = copy.configs.read.resolve(spec, tenant, node_id or None)
        return Resolution(value, scope)

    def flag_state(self, key: str) -> FlagState | None:
        """The flag as last received (lists, archived, version), or None if never seen."""
        entry = self._copy.flags.entries.get(key)
        return entry.state if entry is not None else None

    def flag_keys(self) -> list[str]:
        return sorted(self._copy.flags.entries)

    def config_keys(self) -> list[str]:
        return sorted(self._copy.specs)

    # --- state ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._core.state

    @property
    def error(self) -> ServerError | None:
        """Why the server refused the client, while the state is ERROR."""
        return self._core.error

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Blocks until READY (True) or ``timeout`` seconds (False)."""
        return self._core.ready_event.wait(timeout)

    async def ready(self, timeout: float | None = None) -> bool:
        """Waits, without blocking the caller's loop, until READY (True) or timeout (False)."""
        if self._core.state is State.READY:
            return True
        loop = asyncio.get_running_loop()
        became: asyncio.Future[bool] = loop.create_future()

        def settle() -> None:
            if not became.done():
                became.set_result(True)

        def on_state(state: State) -> None:
            if state is State.READY:
                loop.call_soon_threadsafe(settle)

        self._core.add_state_listener(on_state)
        try:
            if self._core.ready_event.is_set():  # READY between the first check and now
                return True
            async with asyncio.timeout(timeout):
                return await became
        except TimeoutError:
            return False
        finally:
            self._core.remove_state_listener(on_state)

    def on_change(self, callback: Listener, keys: Collection[str] | None = None) -> None:
        """Calls ``callback(change)`` once per applied change (of ``keys`` only, if given).

        Called on the client's background thread, in commit order; keep it short (hand
        work to your own thread or loop, e.g. ``loop.call_soon_threadsafe``). The first
        snapshot of a client started without ``bootstrap`` is its starting point, not a
        change; after a bootstrap file or a resync, each row that differs is one change.
        """
        self._core.add_listener(callback, keys)

    def on_state(self, callback: StateListener) -> None:
        """Calls ``callback(state)`` on every state change, on the background thread."""
        self._core.add_state_listener(callback)

    # --- snapshots ------------------------------------------------------------------------

    def save_snapshot(self, path: str | os.PathLike[str]) -> None:
        """Writes the local copy and its cursors to ``path`` (atomically: write, rename)."""
        data = self._thread.call(self._copy.to_json, timeout=self._deadline_s)
        target = Path(path)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, separators=(",", ":"))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- HealthService ---------------------------------------------------------------------

    def report_heartbeats(self, service_id: str, every_s: float) -> Heartbeats:
        """Sends ``ReportHeartbeat(service_id)`` every ``every_s`` s in the background."""
        core = self._core

        async def start() -> Heartbeats:
            return core.report_heartbeats(service_id, every_s)

        return self._thread.submit(start()).result(self._deadline_s)

    def record_check_result(
        self,
        source_id: str,
        status: str | int,
        details: Mapping[str, Any] | None = None,
    ) -> health_pb2.RecordCheckResultResponse:
        """Records a check result (status ``HEALTHY`` / ``DEGRADED`` / ``UNHEALTHY``).

        A network call: blocks up to the deadline. From asyncio code use
        :meth:`record_check_result_async`.
        """
        call = record_check_result(
            self._core.connection, source_id, status, details, self._deadline_s
        )
        return self._thread.submit(call).result(self._deadline_s * 2)

    async def record_check_result_async(
        self, source_id: str, status: str | int, details: Mapping[str, Any] | None = None
    ) -> health_pb2.RecordCheckResultResponse:
        call = record_check_result(
            self._core.connection, source_id, status, details, self._deadline_s
        )
        return await asyncio.wrap_future(self._thread.submit(call))

    # --- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the streams and heartbeats; answers keep coming from the last state."""
        if self._closed:
            return
        self._closed = True
        if self._thread.alive:
            try:
                self._thread.submit(self._core.stop()).result(10)
            except Exception:
                log.exception("closing the platform-admin client failed")
        if self._own_thread:
            self._thread.stop()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _load(path: str | os.PathLike[str]) -> LocalCopy:
    """The copy saved at ``path``; an empty one if there is no file yet (first start)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        log.warning("no platform-admin snapshot at %s yet: starting empty", path)
        return LocalCopy()
    try:
        return LocalCopy.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a platform-admin client snapshot: {exc}") from exc
