"""The client across a server restart, an expired cursor, and a refused token."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

import grpc
import psycopg
from platform_admin.v1 import config_pb2, config_pb2_grpc, flag_pb2, flag_pb2_grpc
from platform_admin_client import Client, State
from prometheus_client import REGISTRY

from server.app import App
from server.rpc.pipeline import AllowAll
from server.settings import Settings
from tests.auth_helpers import READER, jwt_authorizer, running_app, sign
from tests.client.support import Recorder, client_for, eventually
from tests.conftest import stop_or_explain
from tests.grpcurl_server import run_command
from tests.helpers import TENANT_A
from tests.watch_helpers import channel_to, commit_flag

IDLE = "global.session_idle_minutes"


async def _flag_versions(channel: grpc.aio.Channel) -> dict[str, int]:
    stub = flag_pb2_grpc.FlagServiceStub(channel)
    listed = await stub.ListFlags(flag_pb2.ListFlagsRequest(show_archived=True, page_size=1000))
    return {f.key: int(f.etag) for f in listed.flags}


def _rpcs(method: str, code: str) -> float:
    """Calls the in-process servers finished with ``code`` (their platform_admin_rpcs)."""
    sample = REGISTRY.get_sample_value(
        "platform_admin_rpcs_total", {"method": f"platform_admin.v1.{method}", "code": code}
    )
    return sample or 0.0


def _local_versions(client: Client) -> dict[str, int]:
    return {k: s.version for k in client.flag_keys() if (s := client.flag_state(k))}


async def test_server_restart_client_goes_stale_keeps_answering_and_catches_up_once_in_order(
    db_url: str, settings: Settings
) -> None:
    first = App(replace(settings), db_url, authorizer=AllowAll())
    await first.start()
    port = first.port
    async with client_for(port) as client:
        seen = Recorder()
        client.on_change(seen)
        assert await client.ready(15)
        await commit_flag(db_url, "restart.a")
        await eventually(lambda: seen.versions() == [("restart.a", 1)])
        await stop_or_explain(first)
        await eventually(lambda: client.state is State.STALE, what="STALE while down")
        # While no server runs, writes land in the database (as from another replica).
        for _ in range(3):
            await commit_flag(db_url, "restart.a")
        await commit_flag(db_url, "restart.b")
        assert client.is_enabled("restart.a", TENANT_A, default=True) is False  # last state
        second = App(replace(settings, listen=f"127.0.0.1:{port}"), db_url, authorizer=AllowAll())
        await second.start()
        try:
            assert await client.ready(20)
            async with channel_to(second) as channel:
                expected = await _flag_versions(channel)
            await eventually(lambda: _local_versions(client) == expected, what="caught up")
            assert seen.versions() == [
                ("restart.a", 1),
                ("restart.a", 2),
                ("restart.a", 3),
                ("restart.a", 4),
                ("restart.b", 1),
            ]
        finally:
            await stop_or_explain(second)


async def test_expired_cursor_resyncs_aside_with_no_moment_of_wrong_answers(
    app: App, configs: config_pb2_grpc.ConfigServiceStub, db_url: str, tmp_path: Path
) -> None:
    def set_idle(minutes: int) -> config_pb2.SetConfigRequest:
        return config_pb2.SetConfigRequest(
            key=IDLE,
            scope=config_pb2.CONFIG_SCOPE_TENANT,
            tenant_id=TENANT_A,
            value=config_pb2.ConfigValue(int_value=minutes),
        )

    await configs.SetConfig(set_idle(10))
    await commit_flag(db_url, "resync.kept")
    path = tmp_path / "snapshot.json"
    async with client_for(app.port) as client:
        assert await client.ready(15)
        await asyncio.to_thread(client.save_snapshot, path)

    # Changes the saved cursor will never see: the outbox rows are pruned.
    await configs.SetConfig(set_idle(20))
    await commit_flag(db_url, "resync.new")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE platform_admin.outbox SET created_at = created_at - interval '30 days'"
        )
    pruned = await asyncio.to_thread(run_command, db_url, "prune", "--only", "outbox")
    assert pruned.returncode == 0, pruned.stderr

    expired = _rpcs("FlagService/WatchFlags", "OUT_OF_RANGE")
    async with client_for(app.port, bootstrap=path) as client:
        answers: list[object] = []
        stop = threading.Event()

        def sample() -> None:  # a request thread reading all along the resync
            while not stop.is_set():
                answers.append(client.config(IDLE, TENANT_A))

        reader = threading.Thread(target=sample)
        seen = Recorder()
        client.on_change(seen)
        reader.start()
        try:
            assert await client.ready(15)
            await eventually(lambda: answers and answers[-1] == 20, what="the reader sees 20")
            await asyncio.sleep(0.2)  # and keeps reading after the swap
        finally:
            stop.set()
            reader.join()
    assert _rpcs("FlagService/WatchFlags", "OUT_OF_RANGE") == expired + 1  # CURSOR_EXPIRED once
    assert set(answers) <= {10, 20}, set(answers)  # never the default (30) mid-resync
    first_new = answers.index(20)
    assert set(answers[first_new:]) == {20}, "an old answer came back after the swap"
    assert client.is_enabled("resync.new", TENANT_A) is False
    assert sorted(c.key for c in seen.changes) == [IDLE, "resync.new"]  # one per difference


async def test_refused_token_is_error_with_the_servers_reason_and_no_retry_storm(
    db_url: str, settings: Settings
) -> None:
    def attempts(code: str) -> float:
        return _rpcs("FlagService/WatchFlags", code) + _rpcs("ConfigService/ListConfigKeys", code)

    async with running_app(db_url, settings, authorizer=jwt_authorizer()) as app:
        before = attempts("UNAUTHENTICATED")
        async with client_for(app.port, token="not-a-jwt") as client:
            await eventually(lambda: client.state is State.ERROR, what="ERROR")
            assert client.error is not None
            assert client.error.code is grpc.StatusCode.UNAUTHENTICATED
            assert client.error.reason  # the server's ErrorInfo reason, e.g. TOKEN_MALFORMED
            assert not await client.ready(3.0)
            assert client.state is State.ERROR
        # Two streams, one attempt each in 3+ s: a slow retry, not a storm.
        assert attempts("UNAUTHENTICATED") - before <= 2

        # A valid token, from a callable (refreshed per call), works.
        async with client_for(app.port, token=lambda: sign(READER.claims())) as reader:
            assert await reader.ready(15)
            assert reader.config(IDLE) == 30
