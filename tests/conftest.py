"""Shared fixtures: a fresh migrated database per test and a real gRPC server on loopback."""

from __future__ import annotations

import asyncio
import importlib.util
import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import psycopg
import pytest
from platform_admin.v1 import config_pb2_grpc

from server.app import App
from server.rpc.pipeline import AllowAll
from server.settings import Settings
from tests.bus_helpers import NatsServer, bus_settings
from tests.grpcurl_server import running_server  # noqa: F401  (shared fixture)
from tests.openfeature_helpers import openfeature_server  # noqa: F401  (shared fixture)
from tests.pg import DatabaseFactory

# The console's browser tests need Playwright, which only `make test-browser` installs
# (.[browser]); without it they are not collected (and `make test-browser` would then find
# no tests and fail, so they cannot be skipped silently).
if importlib.util.find_spec("playwright") is None:
    collect_ignore_glob = ["test_console_browser*.py", "browser_helpers.py"]
else:
    from tests.browser_helpers import browser, module_db, page, probe_target  # noqa: F401

TEST_SETTINGS = Settings(
    listen="127.0.0.1:0",
    workers=1,
    pool_min=1,
    pool_max=8,
    pool_acquire_timeout_s=5.0,
    shutdown_grace_s=0.5,
)


@pytest.fixture(scope="session")
def databases() -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory()
    factory.setup_template()
    yield factory
    factory.teardown()


@pytest.fixture
def db_url(databases: DatabaseFactory) -> Iterator[str]:
    url = databases.create()
    yield url
    databases.drop(url)


@pytest.fixture
def sql(db_url: str) -> Iterator[psycopg.Connection]:
    """A plain autocommit connection to the test database, for assertions on stored rows."""
    with psycopg.connect(db_url, autocommit=True, options="-c search_path=platform_admin") as conn:
        yield conn


@pytest.fixture
def settings() -> Settings:
    return TEST_SETTINGS


@pytest.fixture
async def app(db_url: str, settings: Settings) -> AsyncIterator[App]:
    application = App(replace(settings), db_url, authorizer=AllowAll())
    await application.start()
    yield application
    await stop_or_explain(application)


async def stop_or_explain(application: App, timeout: float = 20.0) -> None:
    """Stops the app; if that hangs, fails with every task's stack instead of a bare timeout."""
    try:
        async with asyncio.timeout(timeout):
            await application.stop(grace=0)
    except TimeoutError:
        out = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(file=out)
        raise AssertionError(f"App.stop did not finish in {timeout}s:\n{out.getvalue()}") from None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own (tests/bus_helpers.py), stopped by PID afterwards."""
    server = NatsServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
async def bus_app(db_url: str, settings: Settings, nats_server: NatsServer) -> AsyncIterator[App]:
    """An App with the bus on, relaying to and consuming from ``nats_server``."""
    application = App(
        bus_settings(settings, nats_server.url, probe_enabled=False), db_url, authorizer=AllowAll()
    )
    await application.start()
    yield application
    await stop_or_explain(application)


@pytest.fixture
async def channel(app: App) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as ch:
        yield ch


@pytest.fixture
def configs(channel: grpc.aio.Channel) -> config_pb2_grpc.ConfigServiceStub:
    return config_pb2_grpc.ConfigServiceStub(channel)
