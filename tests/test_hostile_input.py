"""Hostile input: every RPC of every service gets random field values (hypothesis).

Requests are generated from the message descriptors, so a new RPC or field is covered
without touching this file: huge and negative numbers, unknown enum values, long and odd
unicode, NUL bytes, random ids with right and wrong prefixes, forged page tokens and
cursors, out-of-range timestamps, deep structs. For every call:

- the status is deliberate: never INTERNAL or UNKNOWN, never a hang, no SQL or stack in it;
- a rejected call writes nothing (row counts of every table are unchanged);
- the server keeps serving (same process, health SERVING, a normal call answers).

One server process (`platform-admin serve`, authentication on) serves the whole module.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import string
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import grpc
import psycopg
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.ids import new_ulid
from server.app import SERVICE_NAMES
from tests.auth_helpers import (
    ADMIN,
    READER,
    SECRET,
    SERVICE,
    SERVICE_ID,
    TENANT_ADMIN_A,
    Caller,
    all_methods,
    as_caller,
    table_counts,
)
from tests.grpcurl_server import RunningServer, start_server, stop_server
from tests.helpers import TENANT_A, TENANT_B
from tests.test_auth_matrix import SCENARIOS, seed

# A failing example with a 100 kB string has a large repr; hypothesis warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# Examples per RPC: about 30 RPCs x 150 = several thousand calls in well under a minute each.
UNARY_EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "150"))
STREAM_EXAMPLES = max(UNARY_EXAMPLES // 6, 10)
CALL_TIMEOUT_S = 10.0
STREAM_WAIT_S = 1.0
NOT_DELIBERATE = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
LEAKS = ("select ", "insert ", "update ", "delete from", "traceback", "psycopg", 'file "')

METHODS = dict(all_methods())


# --- strategies ---------------------------------------------------------------------------

ULIDS = st.sampled_from(
    [
        TENANT_A,
        TENANT_B,
        TENANT_A.lower(),
        "01JA0000000000000000000AA",
        "81JA0000000000000000000AAA",
    ]
) | st.builds(new_ulid)
PREFIXED = st.tuples(st.sampled_from(["hsr", "hcr", "cph", "xyz", "HSR", ""]), ULIDS).map(
    lambda p: f"{p[0]}_{p[1]}"
)
CONFIG_KEYS = st.sampled_from(
    [
        "global.password_min_length",
        "global.mfa_required_default",
        "email.smtp_host",
        "email.smtp_port",
        "email.from_address",
        "global.unknown",
    ]
)
FLAG_KEYS = st.sampled_from(["matrix.flag", "a", "new.flag-1", "A", "-x", "x" * 101])
CONTEXT_ATTRIBUTES = st.sampled_from(["tenantId", "targetingKey", "nodeId"])
LOOPBACK_URLS = st.sampled_from(
    [
        "http://127.0.0.1:9/health",
        "https://127.0.0.1:9/",
        "grpc://127.0.0.1:9",
        "http://[::1]:9/",
        "http://user:pw@127.0.0.1:9/",
        "ftp://127.0.0.1/",
        "http://",
        "127.0.0.1:9",
    ]
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


TOKENS = st.one_of(
    st.binary(max_size=200).map(_b64),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.builds(
        lambda f, p: _b64(json.dumps({"f": f, "p": p}).encode()),
        st.text(max_size=20),
        st.lists(st.one_of(st.integers(), st.text(max_size=30), st.none()), max_size=5),
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=2000, max_size=3000),
)


def _not_a_remote_url(value: str) -> bool:
    """Nothing generated may make the server contact a host beyond loopback."""
    if "://" not in value and not value.startswith("//"):
        return True
    try:
        host = urlsplit(value if "://" in value else "http:" + value).hostname or ""
    except ValueError:
        return True
    return host in ("", "127.0.0.1", "::1", "localhost")


ODD_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(min_size=1, max_size=20).map(lambda s: f"{s}\x00{s}"),
    st.text(
        alphabet=st.characters(min_codepoint=0x80, exclude_categories=("Cs",)),
        min_size=500,
        max_size=3000,
    ),
    st.sampled_from(["", " ", "\x00", "\u202e", "🚀" * 300, "a" * 100_000, "%s%s%n", "'; --"]),
)


def text_for(field: FieldDescriptor) -> st.SearchStrategy[str]:
    name = field.name
    plausible: list[st.SearchStrategy[str]] = []
    if name.endswith("tenant_id") or name.endswith("tenant_ids"):
        plausible += [ULIDS]
    if name in ("id", "source_id") or name.endswith("_id"):
        plausible += [PREFIXED, ULIDS, st.sampled_from([SERVICE_ID, "ledger", "x" * 101])]
    if name in ("key", "keys"):
        plausible += [CONFIG_KEYS, FLAG_KEYS]
    if name == "key" and field.containing_type.full_name == "google.protobuf.Struct.FieldsEntry":
        plausible += [CONTEXT_ATTRIBUTES]  # OpenFeature evaluation contexts
    if name == "flag_key":
        plausible += [FLAG_KEYS, CONFIG_KEYS.map(lambda k: f"config:{k}")]
    if name == "selector":
        plausible += [st.sampled_from(["flags", "configs", "FLAGS", "source=x", ""])]
    if name == "node_id":
        plausible += [st.sampled_from(["node-7", "NODE 7", "n" * 200])]
    if name == "etag":
        plausible += [st.sampled_from(["1", "0", "-1", "2", "99999999999999999999", "abc"])]
    if name in ("page_token", "cursor"):
        plausible += [TOKENS]
    if name.endswith("url"):
        plausible += [LOOPBACK_URLS]
    if name == "paths":
        plausible += [st.sampled_from(["description", "default_enabled", "health_url", "key"])]
    # Plausible values weigh more, so calls also get past validation into storage.
    return st.one_of(*(plausible * 3), ODD_TEXT).filter(_not_a_remote_url)


INT_EDGES = [0, 1, -1, 5, 60, 1000, 1001, 2**31 - 1, -(2**31)]


def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return text_for(field)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=100)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return st.sampled_from(INT_EDGES) | st.integers(-(2**31), 2**31 - 1)
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return st.sampled_from([*INT_EDGES, 2**63 - 1, -(2**63)]) | st.integers(-(2**63), 2**63 - 1)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if t == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if t == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if t == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.sampled_from(numbers) | st.integers(-3, 50)  # proto3 enums are open
    raise AssertionError(f"unhandled field type {t} of {field.full_name}")


def field_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_f = field.message_type.fields_by_name["key"]
        value_f = field.message_type.fields_by_name["value"]
        value = (
            message_of(value_f.message_type, depth + 1)
            if value_f.message_type is not None
            else scalar(value_f)
        )
        return st.dictionaries(scalar(key_f), value, max_size=4)
    element = (
        message_of(field.message_type, depth + 1)
        if field.message_type is not None
        else scalar(field)
    )
    if not field.is_repeated:
        return element
    lists = st.lists(element, max_size=4)
    if depth == 0:  # just over the 1,000-item limits of batch calls
        lists |= element.map(lambda e: [e] * 1001)
    return lists


def message_of(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of this type: every field absent or set to a hostile value."""
    cls = GetMessageClass(desc)
    if depth > 3:
        return st.just(cls())
    optional = {field.name: field_strategy(field, depth) for field in desc.fields}
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: build(cls, values))


def near_valid(name: str, desc: Descriptor, ids: dict[str, str]) -> st.SearchStrategy[Message]:
    """A request that works (the matrix test's), with one or two fields made hostile: these
    get past the first checks into the deeper rules and storage."""
    seed = SCENARIOS.get(name)
    fields = list(desc.fields)
    if seed is None or not fields:
        return message_of(desc)

    def apply(values: dict[str, Any]) -> Message:
        message = seed(ids)
        for field_name in values:
            message.ClearField(field_name)
        message.MergeFrom(build(type(message), values))
        return message

    chosen = st.lists(st.sampled_from(fields), min_size=1, max_size=2, unique=True)
    return chosen.flatmap(
        lambda picked: st.fixed_dictionaries({f.name: field_strategy(f, 0) for f in picked})
    ).map(apply)


def build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


CALLERS = st.sampled_from([ADMIN, ADMIN, ADMIN, TENANT_ADMIN_A, SERVICE, READER])


# --- the server ----------------------------------------------------------------------------


class Target:
    def __init__(self, server: RunningServer, db_url: str) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(server.address)
        self.sql = psycopg.connect(db_url, autocommit=True, options="-c search_path=platform_admin")
        self.tokens = {c.name: as_caller(c) for c in (ADMIN, TENANT_ADMIN_A, SERVICE, READER)}
        self.calls = 0
        self.ids: dict[str, str] = {}
        self.codes: dict[str, dict[str, int]] = {}

    def close(self) -> None:
        self.channel.close()
        self.sql.close()


@pytest.fixture(scope="module")
def target(databases, tmp_path_factory) -> Iterator[Target]:
    db_url = databases.create()
    env = {
        "PLATFORM_ADMIN_JWT_SECRET": SECRET,
        "PLATFORM_ADMIN_JWT_PUBLIC_KEY_FILE": "",
        "PLATFORM_ADMIN_JWT_ISSUER": "",
        "PLATFORM_ADMIN_AUTH": "",
        # No prober: its results would race the "nothing written" row counts; and should
        # it run anyway, it may only ever reach this machine.
        "PLATFORM_ADMIN_PROBE_ENABLED": "false",
        "PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS": "127.0.0.1/32,::1/128",
    }
    server = start_server(db_url, tmp_path_factory.mktemp("hostile"), env=env)
    t = Target(server, db_url)
    try:
        t.ids = asyncio.run(_seed(server.address))
        yield t
    finally:
        t.close()
        stop_server(server)
        databases.drop(db_url)
    print(f"\nhostile input: {t.calls} calls; status codes per RPC:")
    for rpc, codes in sorted(t.codes.items()):
        print(f"  {rpc}: {codes}")


async def _seed(address: str) -> dict[str, str]:
    """The rows the near-valid requests address (tenant rows, flags, sources) exist."""
    async with grpc.aio.insecure_channel(address) as channel:
        return await seed(channel, as_caller(ADMIN))


def call(t: Target, name: str, request: Message, caller: Caller) -> tuple[grpc.StatusCode, str]:
    method = METHODS[name]
    response_class = GetMessageClass(method.output_type)
    kw = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": response_class.FromString,
    }
    metadata = t.tokens[caller.name]
    try:
        if method.server_streaming:
            stream = t.channel.unary_stream(name, **kw)(
                request, metadata=metadata, timeout=STREAM_WAIT_S
            )
            try:
                next(stream)
            except StopIteration:
                pass
            finally:
                stream.cancel()
            return grpc.StatusCode.OK, ""
        t.channel.unary_unary(name, **kw)(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
        if method.server_streaming and code in (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        ):
            return grpc.StatusCode.OK, ""  # the stream was open and idle: accepted
        return code, details


def still_serving(t: Target) -> None:
    assert t.server.process.poll() is None, f"server died:\n{t.server.log()[-3000:]}"
    health = health_pb2_grpc.HealthStub(t.channel)
    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    keys = METHODS["/platform_admin.v1.ConfigService/ListConfigKeys"]
    response = t.channel.unary_unary(
        "/platform_admin.v1.ConfigService/ListConfigKeys",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=GetMessageClass(keys.output_type).FromString,
    )(GetMessageClass(keys.input_type)(), metadata=t.tokens["platform_admin"], timeout=5)
    assert len(response.keys) == 9


def _order(name: str) -> tuple[bool, str]:
    # Archiving and deleting the seeded rows last lets the other RPCs work on live rows.
    rpc = name.rsplit("/", 1)[-1]
    return (rpc.startswith(("Archive", "Unarchive", "Delete")), name)


@pytest.mark.parametrize("name", sorted(METHODS, key=_order))
def test_hostile_input(target: Target, name: str) -> None:
    assert name.split("/")[1] in SERVICE_NAMES, f"{name} is not served"
    method = METHODS[name]
    examples = STREAM_EXAMPLES if method.server_streaming else UNARY_EXAMPLES
    requests = message_of(method.input_type) | near_valid(name, method.input_type, target.ids)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests, caller=CALLERS)
    def attack(request: Message, caller: Caller) -> None:
        before = table_counts(target.sql)
        started = time.monotonic()
        code, details = call(target, name, request, caller)
        target.calls += 1
        per_method = target.codes.setdefault(name.rsplit("/", 1)[-1], {})
        per_method[code.name] = per_method.get(code.name, 0) + 1
        assert code not in NOT_DELIBERATE, f"{name} as {caller.name}: {code.name} {details!r}"
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{name} hung: {details!r}"
        assert time.monotonic() - started < CALL_TIMEOUT_S
        lowered = details.lower()
        assert not any(leak in lowered for leak in LEAKS), f"{name} leaks: {details!r}"
        if code != grpc.StatusCode.OK:
            assert table_counts(target.sql) == before, f"{name} {code.name} wrote rows"

    attack()
    still_serving(target)
