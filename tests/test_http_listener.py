"""The HTTP listener: serves registered routes, authenticates like gRPC, maps errors, stops."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from domain.errors import Aborted, InvalidArgument
from server.app import App
from server.http.auth import authorize
from server.ops import workers
from server.rpc.pipeline import AllowAll
from server.security.auth import authorizer_for
from server.settings import Settings, SettingsError
from tests.auth_helpers import ADMIN, SECRET, TENANT_ADMIN_A, as_caller, running_app
from tests.conftest import TEST_SETTINGS

LIST_FLAGS = "/platform_admin.v1.FlagService/ListFlags"


def _routes(application: web.Application, app: App) -> None:
    async def whoami(request: web.Request) -> web.Response:
        principal = authorize(request, LIST_FLAGS)
        return web.json_response({"subject": principal.subject})

    async def conflict(request: web.Request) -> web.Response:
        raise Aborted("the flag changed since you read it")

    async def bad(request: web.Request) -> web.Response:
        raise InvalidArgument.field("value", "must be at most 10")

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail")

    application.router.add_get("/test/whoami", whoami)
    application.router.add_get("/test/conflict", conflict)
    application.router.add_get("/test/bad", bad)
    application.router.add_get("/test/broken", broken)


def _header(caller: object) -> dict[str, str]:
    ((_, value),) = as_caller(caller)  # type: ignore[arg-type]
    return {"Authorization": value}


def test_setting_defaults_off_and_validation() -> None:
    assert Settings.from_env({}).http_listen == "127.0.0.1:8016"
    assert Settings.from_env({"PLATFORM_ADMIN_HTTP_LISTEN": "off"}).http_listen is None
    assert Settings.from_env({"PLATFORM_ADMIN_HTTP_LISTEN": "0.0.0.0:9"}).http_listen == "0.0.0.0:9"
    with pytest.raises(SettingsError, match="PLATFORM_ADMIN_HTTP_LISTEN"):
        Settings.from_env({"PLATFORM_ADMIN_HTTP_LISTEN": "8016"})
    # Dev mode (auth off) never listens beyond loopback, on either port.
    with pytest.raises(SettingsError, match="PLATFORM_ADMIN_HTTP_LISTEN"):
        authorizer_for(Settings.from_env({"PLATFORM_ADMIN_HTTP_LISTEN": "0.0.0.0:8016"}))
    # Workers share the HTTP port, so it must be fixed.
    with pytest.raises(SettingsError, match="PLATFORM_ADMIN_HTTP_LISTEN"):
        workers.check_port(
            replace(TEST_SETTINGS, workers=2, listen="127.0.0.1:1", http_listen="127.0.0.1:0")
        )


async def test_listener_serves_authenticates_maps_errors_and_stops(db_url: str) -> None:
    settings = replace(TEST_SETTINGS, http_listen="127.0.0.1:0", jwt_secret=SECRET, auth="jwt")
    # Routes are registered before the port opens.
    app = App(replace(settings, probe_enabled=False), db_url, authorizer=authorizer_for(settings))
    app.http_routes.append(_routes)
    await app.start()
    base = f"http://127.0.0.1:{app.http_port}"
    try:
        assert app.http_port > 0
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/test/whoami") as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                body = await response.json()
                assert body["error"]["code"] == "UNAUTHENTICATED"
                assert "authorization" in body["error"]["message"]
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
            # tenant_admin may not call ListFlags over gRPC, so not here either.
            async with http.get(f"{base}/test/whoami", headers=_header(TENANT_ADMIN_A)) as response:
                assert response.status == 403
                assert (await response.json())["error"]["reason"] == "ROLE_NOT_ALLOWED"
            async with http.get(f"{base}/test/whoami", headers=_header(ADMIN)) as response:
                assert response.status == 200
                assert (await response.json()) == {"subject": ADMIN.sub}
                assert response.headers["Cache-Control"] == "no-store"
            async with http.get(f"{base}/test/conflict") as response:
                assert response.status == 409
                assert (await response.json())["error"]["code"] == "ABORTED"
            async with http.get(f"{base}/test/bad") as response:
                assert response.status == 400
                violations = (await response.json())["error"]["fieldViolations"]
                assert violations == [{"field": "value", "description": "must be at most 10"}]
            async with http.get(f"{base}/test/broken") as response:
                assert response.status == 500
                text = await response.text()
                assert "secret detail" not in text and "Traceback" not in text
            async with http.get(f"{base}/no/such/path") as response:
                assert response.status == 404
                assert (await response.json())["error"]["code"] == "NOT_FOUND"
    finally:
        await app.stop(grace=0)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"{base}/test/whoami"):
                pass


async def test_dev_mode_refuses_foreign_host_names(db_url: str) -> None:
    settings = replace(TEST_SETTINGS, http_listen="127.0.0.1:0", probe_enabled=False)
    app = App(settings, db_url, authorizer=AllowAll())
    app.http_routes.append(_routes)
    await app.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{app.http_port}/test/whoami"
            async with http.get(url) as response:
                assert response.status == 200  # auth off: the anonymous admin
            for host in ("localhost:8016", "127.0.0.1", "[::1]:8016"):
                async with http.get(url, headers={"Host": host}) as response:
                    assert response.status == 200, host
            # A DNS-rebound name reaches the loopback port but is refused.
            for host in ("evil.example", "evil.example:8016", "127.0.0.1.evil.example"):
                async with http.get(url, headers={"Host": host}) as response:
                    assert response.status == 403, host
    finally:
        await app.stop(grace=0)


async def test_no_listener_when_off(db_url: str) -> None:
    async with running_app(db_url, TEST_SETTINGS) as app:
        assert app.settings.http_listen is None and app.http_port == 0


async def test_a_taken_http_port_stops_the_start(db_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = replace(TEST_SETTINGS, http_listen=f"127.0.0.1:{port}", probe_enabled=False)
        app = App(settings, db_url, authorizer=AllowAll())
        with pytest.raises(OSError):
            await app.start()
        # Nothing half-started: the gRPC server never began answering.
        assert app.server is None
        await app.stop(grace=0)
