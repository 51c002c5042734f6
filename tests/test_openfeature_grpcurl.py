"""The flagd protocols as an operator reaches them: grpcurl over reflection, no proto files."""

from __future__ import annotations

import pytest

from tests.helpers import TENANT_A

pytestmark = pytest.mark.grpcurl


def test_reflection_lists_and_describes_the_flagd_services(running_server):
    listed = running_server.grpcurl("list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    for name in (
        "flagd.evaluation.v1.Service",
        "flagd.evaluation.v2.Service",
        "flagd.sync.v1.FlagSyncService",
        "platform_admin.v1.FlagService",
        "grpc.health.v1.Health",
    ):
        assert name in services, listed.stdout
    described = running_server.grpcurl("describe flagd.evaluation.v2.Service")
    assert described.returncode == 0, described.stderr
    assert "rpc ResolveBoolean ( .flagd.evaluation.v2.ResolveBooleanRequest )" in described.stdout


def test_grpcurl_resolves_a_flag_through_flagd_by_reflection(running_server):
    running_server.call(
        "platform_admin.v1.FlagService/CreateFlag", {"key": "ops.flagd", "default_enabled": False}
    )
    running_server.call(
        "platform_admin.v1.FlagService/SetTenantOverride",
        {"key": "ops.flagd", "tenant_id": TENANT_A, "override": "TENANT_OVERRIDE_ENABLED"},
    )
    answer = running_server.call(
        "flagd.evaluation.v2.Service/ResolveBoolean",
        {"flag_key": "ops.flagd", "context": {"tenantId": TENANT_A}},
    )
    assert answer["value"] is True and answer["reason"] == "TARGETING_MATCH", answer
    assert answer["variant"] == "on"
