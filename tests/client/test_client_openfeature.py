"""The OpenFeature provider over the client: typed answers, reasons, and the SDK's events."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus
from platform_admin.v1 import config_pb2, config_pb2_grpc, flag_pb2, flag_pb2_grpc
from platform_admin_client.openfeature import PlatformAdminProvider

from server.app import App
from tests.client.support import client_for, eventually
from tests.helpers import TENANT_A, TENANT_B


@pytest.fixture
def events() -> Iterator[list[tuple[ProviderEvent, list[str] | None]]]:
    seen: list[tuple[ProviderEvent, list[str] | None]] = []
    lock = threading.Lock()
    handlers = {}
    for event in ProviderEvent:

        def handler(details: EventDetails, event: ProviderEvent = event) -> None:
            with lock:
                seen.append((event, details.flags_changed))

        handlers[event] = handler
        api.add_handler(event, handler)
    yield seen
    for event, handler in handlers.items():
        api.remove_handler(event, handler)
    api.clear_providers()


async def test_provider_answers_typed_with_reasons_and_emits_events(
    app: App,
    channel: grpc.aio.Channel,
    configs: config_pb2_grpc.ConfigServiceStub,
    events: list[tuple[ProviderEvent, list[str] | None]],
) -> None:
    flags = flag_pb2_grpc.FlagServiceStub(channel)
    await flags.CreateFlag(flag_pb2.CreateFlagRequest(key="of.flag", default_enabled=False))
    await flags.SetTenantOverride(
        flag_pb2.SetTenantOverrideRequest(
            key="of.flag", tenant_id=TENANT_A, override=flag_pb2.TENANT_OVERRIDE_ENABLED
        )
    )
    await flags.CreateFlag(flag_pb2.CreateFlagRequest(key="of.gone", default_enabled=True))
    await flags.ArchiveFlag(flag_pb2.ArchiveFlagRequest(key="of.gone"))
    await configs.SetConfig(
        config_pb2.SetConfigRequest(
            key="email.smtp_port",
            scope=config_pb2.CONFIG_SCOPE_NODE,
            node_id="node-7",
            value=config_pb2.ConfigValue(int_value=2525),
        )
    )
    async with client_for(app.port) as client:
        provider = PlatformAdminProvider(client)
        # set_provider initialises on the SDK's thread; this loop stays free for the server.
        api.set_provider(provider)
        of = api.get_client()
        await eventually(lambda: of.get_provider_status() is ProviderStatus.READY)

        a = EvaluationContext(attributes={"tenantId": TENANT_A})
        b = EvaluationContext(targeting_key=TENANT_B)
        on = of.get_boolean_details("of.flag", False, a)
        assert (on.value, on.reason, on.variant) == (True, Reason.TARGETING_MATCH, "on")
        off = of.get_boolean_details("of.flag", True, b)
        assert (off.value, off.reason) == (False, Reason.DEFAULT)
        gone = of.get_boolean_details("of.gone", True, a)
        assert (gone.value, gone.reason) == (True, Reason.DISABLED)  # the caller's default
        missing = of.get_boolean_details("of.never", True, a)
        assert (missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
        no_tenant = of.get_boolean_details("of.flag", False)
        assert no_tenant.error_code == ErrorCode.TARGETING_KEY_MISSING

        node = EvaluationContext(attributes={"tenantId": TENANT_A, "nodeId": "node-7"})
        port = of.get_integer_details("config:email.smtp_port", 0, node)
        assert (port.value, port.reason, port.flag_metadata["scope"]) == (
            2525,
            Reason.TARGETING_MATCH,
            "NODE",
        )
        assert of.get_float_value("config:email.smtp_port", 0.0, node) == 2525.0
        default_port = of.get_integer_details("config:email.smtp_port", 0, a)
        assert (default_port.value, default_port.reason) == (587, Reason.DEFAULT)
        host = of.get_string_details("config:email.smtp_host", "", a)
        assert (host.value, host.reason) == ("localhost", Reason.DEFAULT)
        mfa = of.get_boolean_details("config:global.mfa_required_default", True, a)
        assert (mfa.value, mfa.reason) == (False, Reason.DEFAULT)
        wrong = of.get_string_details("config:email.smtp_port", "x", a)
        assert (wrong.value, wrong.error_code) == ("x", ErrorCode.TYPE_MISMATCH)
        for details in (on, off, port, host):
            assert details.reason != Reason.STATIC

        changed = ProviderEvent.PROVIDER_CONFIGURATION_CHANGED
        await flags.UpdateFlag(flag_pb2.UpdateFlagRequest(key="of.flag", default_enabled=True))
        # Flags and configs arrive on two streams, with no order between them: one at a time.
        await eventually(lambda: len([e for e in events if e[0] is changed]) == 1)
        await configs.SetConfig(
            config_pb2.SetConfigRequest(
                key="global.session_idle_minutes",
                scope=config_pb2.CONFIG_SCOPE_TENANT,
                tenant_id=TENANT_B,
                value=config_pb2.ConfigValue(int_value=15),
            )
        )
        await eventually(lambda: len([e for e in events if e[0] is changed]) == 2)
        assert [keys for e, keys in events if e is changed] == [
            ["of.flag"],
            ["config:global.session_idle_minutes"],
        ]
        assert of.get_boolean_value("of.flag", False, b) is True
        assert of.get_integer_value("config:global.session_idle_minutes", 0, b) == 15

        await app.stop(grace=0)  # the server goes away: the provider turns STALE
        await eventually(lambda: of.get_provider_status() is ProviderStatus.STALE, timeout=20)
        await eventually(lambda: ProviderEvent.PROVIDER_STALE in [e for e, _ in events])
        assert of.get_boolean_value("of.flag", False, b) is True  # still answering
