"""The client library through a killed replica and a stopped database.

Both end the same way: the client kept answering from its last state the whole time,
and afterwards holds exactly the database's flags, with every change delivered to its
listener once and in order.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from platform_admin.v1 import flag_pb2, flag_pb2_grpc
from platform_admin_client import Client, State

from server.app import App
from server.rpc.pipeline import AllowAll
from storage.migrate import migrate
from tests.client.support import HEARTBEAT_S, Recorder, client_for, eventually
from tests.conftest import TEST_SETTINGS
from tests.faults.support import OwnCluster
from tests.grpcurl_server import start_server, stop_server
from tests.helpers import TENANT_A

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

KEYS = ["outage.a", "outage.b", "outage.c"]


async def _database_flags(channel: grpc.aio.Channel) -> dict[str, int]:
    stub = flag_pb2_grpc.FlagServiceStub(channel)
    listed = await stub.ListFlags(flag_pb2.ListFlagsRequest(show_archived=True, page_size=1000))
    return {f.key: int(f.etag) for f in listed.flags}


def _local(client: Client) -> dict[str, int]:
    return {key: state.version for key in client.flag_keys() if (state := client.flag_state(key))}


def _assert_each_change_once_in_order(seen: Recorder, final: dict[str, int]) -> None:
    for key, version in final.items():
        got = [v for k, v in seen.versions() if k == key]
        assert got == list(range(1, version + 1)), (key, got)


async def _toggle(stub: flag_pb2_grpc.FlagServiceStub, key: str, on: bool) -> bool:
    """One write; False when the server could not take it (that is the fault)."""
    try:
        await stub.UpdateFlag(flag_pb2.UpdateFlagRequest(key=key, default_enabled=on), timeout=3.0)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
        return False
    return True


async def test_replica_killed_client_moves_to_the_other_and_misses_nothing(
    db_url: str, tmp_path: Path
) -> None:
    env = {"PLATFORM_ADMIN_WATCH_HEARTBEAT_S": str(HEARTBEAT_S)}
    first = start_server(db_url, tmp_path, env)
    second = start_server(db_url, tmp_path, env)
    try:
        async with (
            grpc.aio.insecure_channel(second.address) as channel,
            client_for(
                int(first.address.rsplit(":", 1)[1]), int(second.address.rsplit(":", 1)[1])
            ) as client,
        ):
            stub = flag_pb2_grpc.FlagServiceStub(channel)
            seen = Recorder()
            client.on_change(seen)
            assert await client.ready(20)
            for key in KEYS:
                await stub.CreateFlag(flag_pb2.CreateFlagRequest(key=key))
            await eventually(lambda: len(seen.changes) == len(KEYS))
            assert client.state is State.READY

            writes = 0
            for round_ in range(12):  # the kill falls in the middle of the writes
                if round_ == 4:
                    first.process.send_signal(signal.SIGKILL)
                for key in KEYS:
                    writes += await _toggle(stub, key, round_ % 2 == 0)
                    # Answers never stop, whichever replica (if any) is feeding the client.
                    assert isinstance(client.is_enabled(key, TENANT_A), bool)
                await asyncio.sleep(0.1)
            # The survivor takes the writes; one caught in the kill (e.g. waiting for the
            # dead replica's sequencer lock to free) may time out, committed or not: the
            # comparison below is with what the database holds.
            assert writes >= 12 * len(KEYS) - 3, writes
            assert first.process.wait(10) == -signal.SIGKILL

            final = await _database_flags(channel)
            await eventually(lambda: _local(client) == final, timeout=30, what="caught up")
            assert await client.ready(20)
            _assert_each_change_once_in_order(seen, final)
            assert not client.is_enabled("outage.a", TENANT_A)  # round 11 turned it off
    finally:
        stop_server(first)
        stop_server(second)


@pytest.fixture
def cluster() -> Iterator[OwnCluster]:
    path = Path(tempfile.mkdtemp(prefix="platform-admin-client-faults-"))
    path.chmod(0o755)
    own = OwnCluster(path)
    try:
        yield own
    finally:
        own.close()
        shutil.rmtree(path, ignore_errors=True)


async def test_database_stopped_client_keeps_answering_and_catches_up(
    cluster: OwnCluster,
) -> None:
    await migrate(cluster.conninfo)
    settings = replace(TEST_SETTINGS, watch_heartbeat_s=HEARTBEAT_S, pool_acquire_timeout_s=2.0)
    app = App(settings, cluster.conninfo, health_interval_s=0.2, authorizer=AllowAll())
    await app.start()
    states: list[State] = []
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
            client_for(app.port) as client,
        ):
            client.on_state(states.append)
            stub = flag_pb2_grpc.FlagServiceStub(channel)
            seen = Recorder()
            client.on_change(seen)
            assert await client.ready(20)
            for key in KEYS:
                await stub.CreateFlag(flag_pb2.CreateFlagRequest(key=key, default_enabled=True))
            await eventually(lambda: len(seen.changes) == len(KEYS))

            await asyncio.to_thread(cluster.stop, "fast")
            refused = 0
            for _ in range(10):  # writes fail while the database is down ...
                refused += not await _toggle(stub, "outage.a", False)
                # ... and the client answers from its last state, whatever it calls itself.
                assert client.is_enabled("outage.b", TENANT_A) is True
                assert client.state in (State.READY, State.STALE)
                await asyncio.sleep(0.2)
            assert refused > 0, "the outage was not exercised"

            await asyncio.to_thread(cluster.start)

            for _ in range(150):  # up to 30 s for the server to write again
                if await _toggle(stub, "outage.c", False):
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("writes did not recover after the database restarted")
            final = await _database_flags(channel)
            await eventually(lambda: _local(client) == final, timeout=30, what="caught up")
            assert await client.ready(20)
            assert not client.is_enabled("outage.c", TENANT_A)
            _assert_each_change_once_in_order(seen, final)
            assert State.ERROR not in states
            print(f"client states during the outage: {states}")
    finally:
        await app.stop(grace=0)
