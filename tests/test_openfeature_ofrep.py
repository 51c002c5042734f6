"""The real OpenFeature SDK with the real OFREP provider against ``platform-admin serve``'s
HTTP listener (auth on), and OFREP's bulk endpoint with ETags."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import requests
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from platform_admin.v1 import flag_pb2 as fpb
from platform_admin.v1 import flag_pb2_grpc

from domain.config_keys import ALLOW_LIST
from tests.auth_helpers import ADMIN, SERVICE, TENANT_ADMIN_A, Caller
from tests.grpcurl_server import RunningServer
from tests.openfeature_helpers import (
    CONFIG_TYPES,
    FLAGS,
    TENANTS,
    client_for,
    contexts,
    metadata,
    token,
)

CALL = {bool: "get_boolean_details", int: "get_integer_details", str: "get_string_details"}
CODE_DEFAULTS = {bool: True, int: -1, str: "code-default"}
ALL_CONFIG_KEYS = sorted(ALLOW_LIST)


def ofrep(server: RunningServer, caller: Caller | None) -> OFREPProvider:
    """The provider as a service configures it: the bearer token in a header factory."""
    headers = {"Authorization": f"Bearer {token(caller)}"} if caller else {}
    return OFREPProvider(f"http://{server.http_address}", headers_factory=lambda: headers)


def bulk(server: RunningServer, context: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(
        f"http://{server.http_address}/ofrep/v1/evaluate/flags",
        json={"context": context},
        headers={"Authorization": f"Bearer {token(SERVICE)}", **headers},
        timeout=10,
    )


def test_provider_answers_like_evaluate_flag_and_resolve_config(openfeature_server):
    server, truth = openfeature_server
    checked = 0
    with client_for(ofrep(server, SERVICE)) as client:
        for tenant, node, context in contexts():
            for key in FLAGS:
                expected = truth.flag(key, tenant)
                got = client.get_boolean_details(key, True, context)
                assert got.error_code is None, (key, tenant, got.error_message)
                want = True if expected.value is None else expected.value
                assert (got.value, str(got.reason)) == (want, expected.reason), (key, tenant)
                if expected.variant is not None:
                    assert got.variant == expected.variant
                checked += 1
            for name, kind in CONFIG_TYPES.items():
                expected = truth.config(name, tenant, node)
                got = getattr(client, CALL[kind])(f"config:{name}", CODE_DEFAULTS[kind], context)
                assert got.error_code is None, (name, tenant, got.error_message)
                assert (got.value, str(got.reason)) == (expected.value, expected.reason)
                assert got.variant == expected.variant
                assert got.flag_metadata["sourceScope"] in ("DEFAULT", "PLATFORM", "TENANT", "NODE")
                checked += 1
    assert checked == len(TENANTS) * 2 * (len(FLAGS) + len(CONFIG_TYPES))


def test_unknown_keys_and_wrong_types_are_the_sdk_errors(openfeature_server):
    server, _ = openfeature_server
    context = EvaluationContext(TENANTS[0])
    with client_for(ofrep(server, SERVICE)) as client:
        missing = client.get_boolean_details("of.no-such-flag", True, context)
        assert (missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
        assert missing.error_message == "flag of.no-such-flag does not exist"
        # The OFREP provider checks types itself (a request names no type); Python's bool
        # is an int, so only these mismatches are visible to it.
        for key, call, default in (
            ("of.default-on", "get_string_details", "d"),
            ("config:email.smtp_host", "get_boolean_details", False),
            ("config:global.password_min_length", "get_string_details", "d"),
            ("config:email.smtp_host", "get_integer_details", 3),
        ):
            wrong = getattr(client, call)(key, default, context)
            assert (wrong.value, wrong.error_code) == (default, ErrorCode.TYPE_MISMATCH), key
            assert wrong.error_message
        bad = client.get_boolean_details("of.default-on", True, EvaluationContext("acme"))
        assert bad.error_code == ErrorCode.INVALID_CONTEXT
        assert "targetingKey" in bad.error_message and "ULID" in bad.error_message
        none = client.get_boolean_details("of.default-on", True, EvaluationContext())
        assert none.error_code == ErrorCode.TARGETING_KEY_MISSING


def test_a_change_is_in_the_next_answer(openfeature_server):
    """OFREP asks the server each time (no provider cache): the write's own replica answers
    with it at once."""
    server, _ = openfeature_server
    key, tenant = "of.mixed", TENANTS[10]
    with (
        client_for(ofrep(server, SERVICE)) as client,
        grpc.insecure_channel(server.address) as channel,
    ):
        flags = flag_pb2_grpc.FlagServiceStub(channel)
        for override, want in (
            (fpb.TENANT_OVERRIDE_ENABLED, True),
            (fpb.TENANT_OVERRIDE_INHERIT, False),
        ):
            flags.SetTenantOverride(
                fpb.SetTenantOverrideRequest(key=key, tenant_id=tenant, override=override),
                metadata=metadata(ADMIN),
            )
            assert client.get_boolean_value(key, not want, EvaluationContext(tenant)) is want


def test_auth_for_ofrep(openfeature_server):
    server, _ = openfeature_server
    url = f"http://{server.http_address}/ofrep/v1/evaluate/flags/of.default-on"
    refused = requests.post(url, json={"context": {"targetingKey": TENANTS[0]}}, timeout=10)
    assert (refused.status_code, refused.content) == (401, b"")
    with client_for(ofrep(server, None)) as client:
        anonymous = client.get_boolean_details("of.default-on", True, EvaluationContext(TENANTS[0]))
        assert (
            anonymous.error_code == ErrorCode.GENERAL and "unauthorized" in anonymous.error_message
        )
    with client_for(ofrep(server, TENANT_ADMIN_A)) as client:
        own = client.get_boolean_details(
            "of.default-on", True, EvaluationContext(TENANT_ADMIN_A.tenant_id)
        )
        assert own.error_code is None and own.value is True
        other = client.get_boolean_details("of.default-on", True, EvaluationContext(TENANTS[0]))
        assert other.error_code == ErrorCode.GENERAL and "forbidden" in other.error_message
        assert other.value is True  # the code default, not tenant 0's answer
    forbidden = requests.post(
        url,
        json={"context": {"targetingKey": TENANTS[0]}},
        headers={"Authorization": f"Bearer {token(TENANT_ADMIN_A)}"},
        timeout=10,
    )
    assert (forbidden.status_code, forbidden.content) == (403, b"")


def test_bulk_answers_every_live_key_with_an_etag(openfeature_server):
    server, truth = openfeature_server
    tenant = TENANTS[6]
    first = bulk(server, {"targetingKey": tenant, "nodeId": "node-1"})
    assert first.status_code == 200
    etag = first.headers["ETag"]
    answers = {entry["key"]: entry for entry in first.json()["flags"]}
    live = {k for k, (_, _, _, archived) in FLAGS.items() if not archived}
    assert set(answers) == live | {f"config:{name}" for name in ALL_CONFIG_KEYS}
    for key in live:
        expected = truth.flag(key, tenant)
        assert (answers[key]["value"], answers[key]["reason"]) == (expected.value, expected.reason)
        assert answers[key]["variant"] == expected.variant
    for name in CONFIG_TYPES:
        expected = truth.config(name, tenant, "node-1")
        entry = answers[f"config:{name}"]
        assert (entry["value"], entry["reason"]) == (expected.value, expected.reason)
    # Unchanged: 304 with the same ETag, no body.
    again = bulk(server, {"targetingKey": tenant, "nodeId": "node-1"}, **{"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag)
    # Another tenant's answer has its own ETag.
    assert bulk(server, {"targetingKey": TENANTS[0]}).headers["ETag"] != etag
    # A change for this tenant: a new answer and a new ETag.
    with grpc.insecure_channel(server.address) as channel:
        flag_pb2_grpc.FlagServiceStub(channel).SetTenantOverride(
            fpb.SetTenantOverrideRequest(
                key="of.default-off", tenant_id=tenant, override=fpb.TENANT_OVERRIDE_ENABLED
            ),
            metadata=metadata(ADMIN),
        )
    changed = bulk(server, {"targetingKey": tenant, "nodeId": "node-1"}, **{"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    entry = {e["key"]: e for e in changed.json()["flags"]}["of.default-off"]
    assert (entry["value"], entry["reason"], entry["variant"]) == (True, "TARGETING_MATCH", "on")


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "PARSE_ERROR"),
        (b"[1, 2]", "application/json", 400, "PARSE_ERROR"),
        (b'{"context": "acme"}', "application/json", 400, "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": "acme"}}', "application/json", 400, "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": 7}}', "application/json", 400, "INVALID_CONTEXT"),
        (b'{"context": {}}', "application/json", 400, "TARGETING_KEY_MISSING"),
        (b'{"context": {}}', "text/plain", 400, "PARSE_ERROR"),
        (b"\xff\xfe", "application/json", 400, "PARSE_ERROR"),
    ],
)
def test_bad_bulk_requests_get_ofrep_errors(openfeature_server, body, content_type, status, code):
    server, _ = openfeature_server
    answer = requests.post(
        f"http://{server.http_address}/ofrep/v1/evaluate/flags",
        data=body,
        headers={"Authorization": f"Bearer {token(SERVICE)}", "Content-Type": content_type},
        timeout=10,
    )
    assert answer.status_code == status
    assert answer.json()["errorCode"] == code and answer.json()["errorDetails"]
