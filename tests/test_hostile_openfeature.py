"""Hostile input over the OpenFeature protocols (flagd gRPC and OFREP over HTTP).

Beside the generic fuzzing of every RPC in test_hostile_input.py (which covers the flagd
services too), these are the cases OpenFeature callers can produce: huge contexts,
non-ULID tenants, huge keys, malformed JSON, wrong content types, oversized bodies.
Each gets a clear error (never INTERNAL / 500) and the server keeps serving.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openfeature.schemas.protobuf.flagd.evaluation.v1 import evaluation_pb2 as ev1
from openfeature.schemas.protobuf.flagd.evaluation.v1 import evaluation_pb2_grpc as ev1_grpc
from openfeature.schemas.protobuf.flagd.evaluation.v2 import evaluation_pb2 as ev2
from openfeature.schemas.protobuf.flagd.evaluation.v2 import evaluation_pb2_grpc as ev2_grpc

from tests.auth_helpers import SERVICE
from tests.openfeature_helpers import TENANTS, metadata, token

HUGE_CONTEXT = {f"attribute{i}": f"value {i}" for i in range(10_000)}
BAD_TENANTS = [
    "acme",
    "01JT000000000000000000000",  # 25 characters
    "01JT0000000000000000000000X",  # 27
    "81JT0000000000000000000000",  # over 128 bits
    "01JT00000000000000000000I0",  # not Crockford
    "01JT00000000000000000000\u0660\u0660",  # Arabic-Indic digits
    "",
    "\x00",
    "x" * 100_000,
]


def _check(call: Any) -> grpc.RpcError | Any:
    try:
        return call()
    except grpc.RpcError as error:
        assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
            error.code(),
            error.details(),
        )
        assert "traceback" not in (error.details() or "").lower()
        return error


@pytest.fixture(scope="module")
def stubs(openfeature_server):
    server, _ = openfeature_server
    with grpc.insecure_channel(server.address) as channel:
        yield ev1_grpc.ServiceStub(channel), ev2_grpc.ServiceStub(channel), channel


def _request(kind: Any, key: str, context: dict[str, Any]) -> Any:
    request = kind(flag_key=key)
    request.context.update(context)
    return request


def test_huge_contexts_over_grpc(openfeature_server, stubs):
    v1, v2, _ = stubs
    md = metadata(SERVICE)
    big = {**HUGE_CONTEXT, "targetingKey": TENANTS[5]}
    answer = _check(
        lambda: v2.ResolveBoolean(
            _request(ev2.ResolveBooleanRequest, "of.mixed", big), metadata=md, timeout=10
        )
    )
    assert answer.value is True and answer.reason == "TARGETING_MATCH"
    every = _check(lambda: v1.ResolveAll(ev1.ResolveAllRequest(), metadata=md, timeout=10))
    assert isinstance(every, grpc.RpcError)  # no tenant: named, not a crash
    assert every.code() == grpc.StatusCode.INVALID_ARGUMENT and "tenantId" in every.details()
    request = ev1.ResolveAllRequest()
    request.context.update(big)
    assert "of.mixed" in _check(lambda: v1.ResolveAll(request, metadata=md, timeout=10)).flags
    # Over the 4 MiB message limit: refused before any parsing.
    huge = _request(ev2.ResolveBooleanRequest, "of.mixed", {"blob": "x" * (5 * 1024 * 1024)})
    error = _check(lambda: v2.ResolveBoolean(huge, metadata=md, timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Nesting beyond the protobuf decoder's depth limit: INVALID_ARGUMENT, not UNKNOWN.
    nested: dict[str, Any] = {"targetingKey": TENANTS[5]}
    inner = nested
    for _ in range(60):
        inner["n"] = {}
        inner = inner["n"]
    deep = _request(ev2.ResolveBooleanRequest, "of.mixed", nested)
    error = _check(lambda: v2.ResolveBoolean(deep, metadata=md, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "request" in error.details()


@pytest.mark.parametrize("tenant", BAD_TENANTS, ids=range(len(BAD_TENANTS)))
def test_non_ulid_tenants_over_grpc_and_http(openfeature_server, stubs, tenant):
    server, _ = openfeature_server
    _, v2, _ = stubs
    request = _request(ev2.ResolveBooleanRequest, "of.mixed", {"tenantId": tenant})
    error = _check(lambda: v2.ResolveBoolean(request, metadata=metadata(SERVICE), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tenantId" in error.details() or "targetingKey" in error.details()
    answer = requests.post(
        f"http://{server.http_address}/ofrep/v1/evaluate/flags/of.mixed",
        json={"context": {"tenantId": tenant}},
        headers={"Authorization": f"Bearer {token(SERVICE)}"},
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["errorCode"] in ("INVALID_CONTEXT", "TARGETING_KEY_MISSING")


def test_huge_keys(openfeature_server, stubs):
    server, _ = openfeature_server
    _, v2, _ = stubs
    key = "k" * 100_000
    request = _request(ev2.ResolveBooleanRequest, key, {"targetingKey": TENANTS[0]})
    error = _check(lambda: v2.ResolveBoolean(request, metadata=metadata(SERVICE), timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND and len(error.details()) < 300
    answer = requests.post(
        f"http://{server.http_address}/ofrep/v1/evaluate/flags/{'k' * 6000}",
        json={"context": {"targetingKey": TENANTS[0]}},
        headers={"Authorization": f"Bearer {token(SERVICE)}"},
        timeout=10,
    )
    assert answer.status_code in (404, 414, 431)  # a 6 kB request line may be refused first
    if answer.status_code == 404:
        assert answer.json()["errorCode"] == "FLAG_NOT_FOUND"


def _post(server: Any, path: str, data: bytes, content_type: str = "application/json") -> Any:
    return requests.post(
        f"http://{server.http_address}/ofrep/v1/evaluate/flags{path}",
        data=data,
        headers={"Authorization": f"Bearer {token(SERVICE)}", "Content-Type": content_type},
        timeout=20,
    )


@pytest.mark.parametrize("path", ["", "/of.mixed"])
def test_hostile_http_bodies(openfeature_server, path):
    server, _ = openfeature_server
    big = json.dumps({"context": {**HUGE_CONTEXT, "targetingKey": TENANTS[5]}}).encode()
    ok = _post(server, path, big)
    assert ok.status_code == 200, ok.text
    cases = [
        (b"{" * 100_000, "application/json", 400),  # nesting beyond the parser's limit
        (b"[" * 500_000, "application/json", 400),
        (b'{"context": ' + b"1" * 10 + b"}", "application/json", 400),
        (b"\x00\x01\x02", "application/json", 400),
        (b'{"context": {}}', "application/x-www-form-urlencoded", 400),
        (b'{"context": {}}', "multipart/form-data; boundary=x", 400),
        (b"x" * (2 * 1024 * 1024), "application/json", 400),  # over the 1 MiB body limit
    ]
    for body, content_type, status in cases:
        answer = _post(server, path, body, content_type)
        assert answer.status_code == status, (body[:20], content_type, answer.status_code)
        assert answer.json()["errorCode"] in ("PARSE_ERROR", "INVALID_CONTEXT"), answer.text
        assert "traceback" not in answer.text.lower()


def test_still_serving(openfeature_server, stubs):
    server, _ = openfeature_server
    _, v2, channel = stubs
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    request = _request(ev2.ResolveBooleanRequest, "of.mixed", {"targetingKey": TENANTS[5]})
    assert v2.ResolveBoolean(request, metadata=metadata(SERVICE), timeout=5).value is True
    assert (
        _post(
            server, "/of.mixed", b'{"context": {"targetingKey": "%s"}}' % TENANTS[5].encode()
        ).json()["value"]
        is True
    )
    assert server.process.poll() is None
