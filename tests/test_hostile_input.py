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
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
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
from platform_admin.v1 import config_pb2 as cpb
from platform_admin.v1 import config_pb2_grpc, flag_pb2_grpc
from platform_admin.v1 import flag_pb2 as fpb
from platform_admin.v1 import health_pb2 as hpb
from platform_admin.v1 import health_pb2_grpc as hpb_grpc

from domain.ids import new_ulid
from server.app import SERVICE_NAMES
from server.rpc.pipeline import AllowAll
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
    running_app,
    table_counts,
)
from tests.grpcurl_server import RunningServer, start_server, stop_server
from tests.helpers import TENANT_A, TENANT_B
from tests.test_auth_matrix import SCENARIOS, seed
from tests.test_auth_matrix import call as call_async

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


# --- control characters in every string field ----------------------------------------------

# A trailing newline is the case ``re.match`` with ``$`` lets through; the others are what a
# log viewer, terminal or mail header downstream may act on.
CONTROLS = ["\n", "\r\n", "\x00", "\t", "\x1b[2J", "\x7f", "\x85", "\x0b"]
# Prose may span lines: a description accepts newline and tab, and nothing else of CONTROLS.
PROSE_ALLOWS = {"\n", "\t"}
# google.protobuf.Struct is an arbitrary JSON document by contract (RecordCheckResult
# details): its strings are data kept as JSON, never an identifier, so it is not walked.
OPAQUE_MESSAGES = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}


def string_paths(desc: Descriptor, prefix: str = "") -> Iterator[str]:
    """Every string field of a request, nested ones as ``outer.inner``."""
    for field in desc.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            yield prefix + field.name
        elif field.message_type is not None and field.message_type.full_name not in (
            OPAQUE_MESSAGES
        ):
            yield from string_paths(field.message_type, f"{prefix}{field.name}.")


def _control_cases() -> list[tuple[str, str]]:
    return [
        (name, path)
        for name, method in sorted(METHODS.items())
        for path in string_paths(method.input_type)
    ]


class ControlTarget:
    """An in-process server with the matrix seed, plus tokens to page and resume with."""

    def __init__(self, channel: grpc.aio.Channel, sql: psycopg.Connection) -> None:
        self.channel = channel
        self.sql = sql
        self.ids: dict[str, str] = {}
        self.page_tokens: dict[str, str] = {}
        self.cursor = ""
        self.created: list[str] = []


def _valid_base(t: ControlTarget, name: str, path: str, request: Message) -> tuple[Message, str]:
    """The seed request, adjusted so ``path`` holds a value that is valid on its own."""
    rpc = name.rsplit("/", 1)[-1]
    leaf = path.rsplit(".", 1)[-1]
    if path == "value.string_value":
        request = type(request)(
            key="email.smtp_host",
            scope=cpb.CONFIG_SCOPE_PLATFORM,
            value={"string_value": "smtp.example.com"},
        )
        return request, "smtp.example.com"
    if leaf == "page_token":
        return request, t.page_tokens[rpc]
    if leaf == "cursor":
        return request, t.cursor
    if leaf == "paths":
        return request, "description" if "Flag" in rpc else "health_url"
    current = _get(request, path)
    if isinstance(current, str) and current:
        return request, current
    if current and not isinstance(current, str):  # a repeated field already set
        return request, str(current[0])
    bases = {
        "tenant_id": TENANT_A,
        "node_id": "node-7",
        "etag": "1",
        "service_id": SERVICE_ID,
        "id": t.ids.get(SERVICE_ID, ""),
        "source_id": t.ids.get(SERVICE_ID, ""),
        "health_url": "http://127.0.0.1:9/health",
        "description": "a description",
        "provider_id": "matrix-provider",
        "selector": "flags",
    }
    if leaf in ("key", "keys"):
        flag_rpc = "/platform_admin.v1.FlagService/" in name
        return request, "matrix.flag" if flag_rpc else "global.password_min_length"
    return request, bases[leaf]


def _mask_fields(request: Message) -> list[str]:
    """The fields an update request's non-empty update_mask names (an empty mask: all)."""
    if "update_mask" not in request.DESCRIPTOR.fields_by_name:
        return []
    paths = list(request.update_mask.paths)  # type: ignore[attr-defined]
    identity = {"id", "key", "etag", "update_mask"}
    return [f.name for f in request.DESCRIPTOR.fields if f.name not in identity] if paths else []


def _get(message: Message, path: str) -> Any:
    value: Any = message
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _set(message: Message, path: str, value: str) -> None:
    *outer, leaf = path.split(".")
    target: Any = message
    for part in outer:
        target = getattr(target, part)
    field = target.DESCRIPTOR.fields_by_name[leaf]
    if field.is_repeated:
        del getattr(target, leaf)[:]
        getattr(target, leaf).append(value)
    else:
        setattr(target, leaf, value)


@pytest.fixture
async def control_target(db_url, settings, sql) -> AsyncIterator[ControlTarget]:
    admin = as_caller(ADMIN)
    async with (
        running_app(db_url, settings) as app,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        t = ControlTarget(channel, sql)
        t.ids = await seed(channel, admin)
        configs = config_pb2_grpc.ConfigServiceStub(channel)
        flags = flag_pb2_grpc.FlagServiceStub(channel)
        health = hpb_grpc.HealthServiceStub(channel)
        await configs.SetConfig(
            cpb.SetConfigRequest(
                key="global.password_min_length",
                scope=cpb.CONFIG_SCOPE_TENANT,
                tenant_id=TENANT_A,
                value=cpb.ConfigValue(int_value=16),
            ),
            metadata=admin,
        )
        await health.RecordCheckResult(
            hpb.RecordCheckResultRequest(
                source_id=t.ids[SERVICE_ID], status=hpb.HEALTH_STATUS_HEALTHY
            ),
            metadata=admin,
        )
        await asyncio.sleep(1.1)  # the per-source push limit
        await health.RecordCheckResult(
            hpb.RecordCheckResultRequest(
                source_id=t.ids[SERVICE_ID], status=hpb.HEALTH_STATUS_HEALTHY
            ),
            metadata=admin,
        )
        one = {"page_size": 1}
        pages = {
            "ListConfigs": configs.ListConfigs(cpb.ListConfigsRequest(**one), metadata=admin),
            "ListConfigHistory": configs.ListConfigHistory(
                cpb.ListConfigHistoryRequest(
                    key="global.password_min_length",
                    scope=cpb.CONFIG_SCOPE_TENANT,
                    tenant_id=TENANT_A,
                    **one,
                ),
                metadata=admin,
            ),
            "ListFlags": flags.ListFlags(fpb.ListFlagsRequest(**one), metadata=admin),
            "ListHealthSources": health.ListHealthSources(
                hpb.ListHealthSourcesRequest(**one), metadata=admin
            ),
            "ListCheckResults": health.ListCheckResults(
                hpb.ListCheckResultsRequest(source_id=t.ids[SERVICE_ID], **one), metadata=admin
            ),
        }
        for rpc, pending in pages.items():
            t.page_tokens[rpc] = (await pending).next_page_token
            assert t.page_tokens[rpc], f"{rpc} gave no next page"
        async for message in flags.WatchFlags(fpb.WatchFlagsRequest(), metadata=admin):
            if message.WhichOneof("event") == "snapshot_end":
                t.cursor = message.cursor
                break
        assert t.cursor
        yield t


@pytest.mark.parametrize(("name", "path"), _control_cases())
async def test_control_characters_are_refused(
    control_target: ControlTarget, name: str, path: str
) -> None:
    """Every string field, set to a valid value plus a control character, is refused by name
    (INVALID_ARGUMENT, nothing written) — but for prose, which may hold newlines and tabs."""
    t = control_target
    method = METHODS[name]
    assert name in SCENARIOS, f"add a request for {name} to the matrix SCENARIOS"
    leaf = path.rsplit(".", 1)[-1]
    prose = leaf == "description"
    for control in CONTROLS:
        for placed in ("suffix", "inside"):
            request, base = _valid_base(t, name, path, SCENARIOS[name](t.ids))
            value = base + control if placed == "suffix" else base[:1] + control + base[1:]
            _set(request, path, value)
            if leaf in _mask_fields(request) and path != "update_mask.paths":
                request.update_mask.paths.append(leaf)  # else the field is ignored, not read
            if name.endswith("/CreateFlag") and leaf != "key":
                request.key = f"matrix.control-{len(t.created)}"  # type: ignore[attr-defined]
                t.created.append(request.key)  # type: ignore[attr-defined]
            before = table_counts(t.sql)
            code, answer = await call_async(t.channel, name, method, request, as_caller(ADMIN))
            shown = f"{name} {path}={value!r}"
            if prose and control in PROSE_ALLOWS:
                assert code == grpc.StatusCode.OK, f"{shown}: {code} {answer}"
                continue
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{shown}: {code} {answer}"
            named = path.split(".")[0]
            assert any(named in field for field in answer.fields), f"{shown}: {answer.fields}"
            assert table_counts(t.sql) == before, f"{shown} wrote rows"


# --- memory an authenticated caller could pin -----------------------------------------------


async def _create_flags(channel: grpc.aio.Channel, count: int) -> list[str]:
    flags = flag_pb2_grpc.FlagServiceStub(channel)
    keys = [f"mem.flag-{i}" for i in range(count)]
    for key in keys:
        await flags.CreateFlag(fpb.CreateFlagRequest(key=key), metadata=as_caller(ADMIN))
    return keys


@pytest.fixture
async def memory_app(db_url, settings) -> AsyncIterator[Any]:
    from server.app import App

    application = App(replace(settings, answer_cache_mib=1), db_url, authorizer=AllowAll())
    await application.start()
    try:
        yield application
    finally:
        await application.stop(grace=0)


async def test_made_up_keys_pin_no_cache_memory(memory_app):
    """999 distinct unknown 100-character keys per call, over many tenants: answered, with
    every key in missing_keys, and nothing of it kept."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{memory_app.port}") as channel:
        flags = flag_pb2_grpc.FlagServiceStub(channel)
        await _create_flags(channel, 3)
        cache = memory_app.read_model._flag_answers
        for call_no in range(30):
            keys = [f"k{call_no:03d}.{i:04d}".ljust(100, "x") for i in range(999)]
            answer = await flags.EvaluateFlags(
                fpb.EvaluateFlagsRequest(tenant_id=new_ulid(), keys=[*keys, "mem.flag-0"])
            )
            assert len(answer.missing_keys) == 999 and list(answer.evaluations) == ["mem.flag-0"]
        assert (cache.size, cache.bytes) == (0, 0)
        # Answers for keys that exist are cached, and bounded in bytes (1 MiB here).
        for _ in range(2000):
            await flags.EvaluateFlags(
                fpb.EvaluateFlagsRequest(tenant_id=new_ulid(), keys=["mem.flag-1", "mem.flag-2"])
            )
        assert 0 < cache.bytes <= 1024 * 1024


async def test_too_many_keys_are_refused_before_they_are_walked(memory_app):
    """A 4 MiB EvaluateFlags of ~1 M one-character keys: INVALID_ARGUMENT, and the server
    never turned the keys into Python objects (each would cost ~50 bytes)."""
    import tracemalloc

    request = fpb.EvaluateFlagsRequest(tenant_id=TENANT_A, keys=["a"] * 1_300_000)
    raw = request.SerializeToString()
    assert len(raw) < 4 * 1024 * 1024
    del request
    async with grpc.aio.insecure_channel(f"127.0.0.1:{memory_app.port}") as channel:
        call = channel.unary_unary(
            "/platform_admin.v1.FlagService/EvaluateFlags",
            request_serializer=lambda b: b,
            response_deserializer=fpb.EvaluateFlagsResponse.FromString,
        )
        tracemalloc.start()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(raw, timeout=10)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000 keys" in (refused.value.details() or "")
    assert peak < 10 * 1024 * 1024, f"{peak:,} bytes allocated while refusing"
