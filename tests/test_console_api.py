"""The console's JSON API and event stream: same servicers, same policy, same errors as gRPC."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import grpc
import pytest
from platform_admin.v1 import flag_pb2, flag_pb2_grpc

from server.app import App
from tests.auth_helpers import (
    ADMIN,
    READER,
    SECRET,
    TENANT_ADMIN_A,
    Caller,
    as_caller,
    running_app,
)
from tests.conftest import TEST_SETTINGS
from tests.helpers import TENANT_A, TENANT_B


@dataclass
class Api:
    app: App
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.app.http_port}"

    async def call(
        self, method: str, body: Any = None, caller: Caller | None = ADMIN, **kw: Any
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        if caller is not None:
            headers["Authorization"] = as_caller(caller)[0][1]
        data = kw.pop("data", json.dumps(body or {}))
        async with self.http.post(
            f"{self.base}/api/v1/{method}", data=data, headers=headers
        ) as response:
            return response.status, await response.json()

    def grpc_metadata(self, caller: Caller) -> tuple[tuple[str, str]]:
        return as_caller(caller)


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[Api]:
    settings = replace(TEST_SETTINGS, http_listen="127.0.0.1:0", auth="jwt", jwt_secret=SECRET)
    async with running_app(db_url, settings) as app, aiohttp.ClientSession() as http:
        yield Api(app, http)


async def test_reads_and_writes_go_through_the_servicers(api: Api) -> None:
    status, created = await api.call("FlagService/ListFlags")
    assert (status, created) == (200, {"flags": [], "nextPageToken": ""})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.app.port}") as channel:
        stub = flag_pb2_grpc.FlagServiceStub(channel)
        await stub.CreateFlag(
            flag_pb2.CreateFlagRequest(key="beta", description="b"),
            metadata=api.grpc_metadata(ADMIN),
        )
        status, body = await api.call(
            "FlagService/SetTenantOverride",
            {
                "key": "beta",
                "tenantId": TENANT_A,
                "override": "TENANT_OVERRIDE_ENABLED",
                "etag": "1",
            },
        )
        assert status == 200, body
        assert body["flag"]["enabledTenantIds"] == [TENANT_A] and body["flag"]["etag"] == "2"
        # The gRPC side sees the write at once (one servicer, one read model).
        evaluation = await stub.EvaluateFlag(
            flag_pb2.EvaluateFlagRequest(key="beta", tenant_id=TENANT_A),
            metadata=api.grpc_metadata(ADMIN),
        )
        assert evaluation.enabled
    # Defaults are spelled out, so the page never guesses a missing false.
    status, body = await api.call("FlagService/GetFlag", {"key": "beta"}, caller=READER)
    assert (
        status == 200 and body["flag"]["defaultEnabled"] is False and not body["flag"]["archived"]
    )


async def test_refusals_match_grpc(api: Api) -> None:
    status, body = await api.call("FlagService/ListFlags", caller=None)
    assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED"
    # A reader may read but not write: PERMISSION_DENIED, as the RPC says it.
    status, body = await api.call(
        "FlagService/UpdateFlag", {"key": "x", "defaultEnabled": True}, caller=READER
    )
    assert status == 403
    assert (
        body["error"]["reason"] == "ROLE_NOT_ALLOWED" and "UpdateFlag" in body["error"]["message"]
    )
    # A tenant admin reads no flag definitions.
    status, body = await api.call("FlagService/ListFlags", caller=TENANT_ADMIN_A)
    assert status == 403
    # RPCs the console does not use are not reachable here at all.
    status, body = await api.call("FlagService/CreateFlag", {"key": "x"})
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    for unused in ("HealthService/DeleteHealthSource", "HealthService/ListHealthSources"):
        status, body = await api.call(unused, {})
        assert status == 404, unused


async def test_bad_input_is_a_clear_400(api: Api) -> None:
    status, body = await api.call("FlagService/ListFlags", data="{not json")
    assert status == 400 and body["error"]["fieldViolations"][0]["field"] == "body"
    status, body = await api.call("FlagService/ListFlags", {"noSuchField": 1})
    assert status == 400 and "noSuchField" in body["error"]["message"]
    status, body = await api.call(
        "FlagService/ListFlags", data="{}", headers={"Content-Type": "text/plain"}
    )
    assert status == 415 and body["error"]["httpStatus"] == 415
    # The server's own field check, with the field named, and nothing written.
    status, body = await api.call(
        "ConfigService/SetConfig",
        {
            "key": "global.password_min_length",
            "scope": "CONFIG_SCOPE_TENANT",
            "tenantId": TENANT_A,
            "value": {"intValue": "3"},
        },
    )
    assert status == 400
    fields = {v["field"]: v["description"] for v in body["error"]["fieldViolations"]}
    assert "value" in fields and "8" in fields["value"]
    status, body = await api.call(
        "ConfigService/ListConfigs", {"scope": "CONFIG_SCOPE_TENANT", "tenantId": TENANT_A}
    )
    assert body["configs"] == []
    # Too large a body: refused before parsing.
    status, body = await api.call("FlagService/ListFlags", data=io.BytesIO(b"x" * 2 * 1024 * 1024))
    assert status == 413


async def test_etag_conflict_is_409_aborted(api: Api) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.app.port}") as channel:
        stub = flag_pb2_grpc.FlagServiceStub(channel)
        await stub.CreateFlag(flag_pb2.CreateFlagRequest(key="race"), metadata=as_caller(ADMIN))
        await stub.UpdateFlag(
            flag_pb2.UpdateFlagRequest(key="race", default_enabled=True, etag="1"),
            metadata=as_caller(ADMIN),
        )
    status, body = await api.call(
        "FlagService/UpdateFlag", {"key": "race", "defaultEnabled": False, "etag": "1"}
    )
    assert status == 409 and body["error"]["code"] == "ABORTED"
    status, body = await api.call("FlagService/GetFlag", {"key": "race"})
    assert body["flag"]["defaultEnabled"] is True and body["flag"]["etag"] == "2"


async def test_tenant_admin_sees_only_its_tenant_rows(api: Api) -> None:
    for tenant, value in ((TENANT_A, "20"), (TENANT_B, "30")):
        status, body = await api.call(
            "ConfigService/SetConfig",
            {
                "key": "global.password_min_length",
                "scope": "CONFIG_SCOPE_TENANT",
                "tenantId": tenant,
                "value": {"intValue": value},
            },
        )
        assert status == 200, body
    status, body = await api.call("ConfigService/ListConfigs", caller=TENANT_ADMIN_A)
    assert status == 200
    assert {(c["tenantId"], c["value"]["intValue"]) for c in body["configs"]} == {(TENANT_A, "20")}
    status, body = await api.call(
        "ConfigService/ListConfigs", {"tenantId": TENANT_B}, caller=TENANT_ADMIN_A
    )
    assert body["configs"] == []


async def test_session_says_what_the_policy_allows(api: Api) -> None:
    async def session(caller: Caller | None) -> tuple[int, dict[str, Any]]:
        headers = {} if caller is None else {"Authorization": as_caller(caller)[0][1]}
        async with api.http.get(f"{api.base}/api/v1/session", headers=headers) as response:
            return response.status, await response.json()

    status, body = await session(None)
    assert status == 401
    status, body = await session(READER)
    assert status == 200 and body["devMode"] is False and body["roles"] == ["platform_reader"]
    assert body["can"]["FlagService/ListFlags"] and not body["can"]["FlagService/UpdateFlag"]
    status, body = await session(TENANT_ADMIN_A)
    assert body["tenantScoped"] and body["tenantId"] == TENANT_A
    assert body["can"]["ConfigService/SetConfig"] and not body["can"]["FlagService/ListFlags"]


async def _read_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    buffer = b""
    while len(events) < count:
        buffer += await response.content.readany()
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            lines = block.decode().split("\n")
            if "event: change" in lines:
                data = next(line for line in lines if line.startswith("data: "))
                events.append(json.loads(data[len("data: ") :]))
    return events


async def test_events_stream_changes_and_end_at_stop(db_url: str) -> None:
    settings = replace(TEST_SETTINGS, http_listen="127.0.0.1:0", auth="jwt", jwt_secret=SECRET)
    async with running_app(db_url, settings) as app, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{app.http_port}/api/v1/events"
        headers = {"Authorization": as_caller(READER)[0][1]}
        tenant_headers = {"Authorization": as_caller(TENANT_ADMIN_A)[0][1]}
        async with http.get(f"{base}?topics=flags", headers=tenant_headers) as refused:
            assert refused.status == 403
        async with http.get(f"{base}?topics=nope", headers=headers) as refused:
            assert refused.status == 400
        async with http.get(f"{base}?topics=flags,health", headers=headers) as stream:
            assert stream.status == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            assert stream.headers["X-Content-Type-Options"] == "nosniff"
            first = await stream.content.readuntil(b"\n\n")
            assert b"connected" in first
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                await flag_pb2_grpc.FlagServiceStub(channel).CreateFlag(
                    flag_pb2.CreateFlagRequest(key="live"), metadata=as_caller(ADMIN)
                )
            (event,) = await asyncio.wait_for(_read_events(stream, 1), 10)
            assert event["topic"] == "flags" and event["seq"] > 0
            # Stopping the server ends the stream instead of hanging the client.
            await asyncio.wait_for(app.http.stop(), 10)
            rest = await asyncio.wait_for(stream.content.read(), 10)
            assert b"event: change" not in rest


async def test_console_pages_are_served_with_strict_headers(api: Api) -> None:
    for path, kind in (
        ("/", "text/html"),
        ("/static/app.js", "javascript"),
        ("/static/style.css", "text/css"),
    ):
        async with api.http.get(api.base + path) as response:
            assert response.status == 200, path
            assert kind in response.headers["Content-Type"]
            csp = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    async with api.http.get(api.base + "/static/../server/app.py") as response:
        assert response.status in (403, 404)
    async with api.http.get(api.base + "/") as response:
        html = await response.text()
        # No inline script and nothing from another origin.
        assert "<script>" not in html and "http://" not in html and "https://" not in html


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'"text"',
        b"null",
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'{"key": "\xff\xfe"}',
        b'{"pageSize": 1e20}',
        b'{"pageSize": NaN}',
        b'{"pageSize": true}',
        b'{"scope": "CONFIG_SCOPE_NOPE"}',
        b'{"key": "' + b"k" * 100_000 + b'"}',
    ],
    ids=["array", "string", "null", "deep", "not-utf8", "overflow", "nan", "bool", "enum", "long"],
)
async def test_hostile_bodies_are_clear_400s_and_the_server_keeps_serving(
    api: Api, body: bytes
) -> None:
    for method in (
        "FlagService/GetFlag",
        "ConfigService/SetConfig",
        "HealthService/ListCheckResults",
    ):
        status, answer = await api.call(method, data=body)
        assert status == 400, (method, answer)
        assert answer["error"]["code"] == "INVALID_ARGUMENT"
        assert "Traceback" not in answer["error"]["message"]
    # Without a token the body is never looked at.
    status, answer = await api.call("FlagService/GetFlag", data=body, caller=None)
    assert status == 401
    status, _ = await api.call("FlagService/ListFlags")
    assert status == 200
