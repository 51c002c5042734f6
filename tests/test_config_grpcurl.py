"""ConfigService as an operator drives it: the real grpcurl over reflection, no proto files."""

from __future__ import annotations

import pytest

from tests.helpers import TENANT_A

pytestmark = pytest.mark.grpcurl
S = "platform_admin.v1.ConfigService"


def test_reflection_lists_the_services(running_server):
    listed = running_server.grpcurl("list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert "platform_admin.v1.ConfigService" in services
    assert "grpc.health.v1.Health" in services
    described = running_server.grpcurl(f"describe {S}")
    assert described.returncode == 0
    assert "rpc ResolveConfig ( .platform_admin.v1.ResolveConfigRequest )" in described.stdout


def test_set_resolve_and_history_through_grpcurl(running_server):
    key = "global.session_idle_minutes"
    target = {"key": key, "scope": "CONFIG_SCOPE_TENANT", "tenant_id": TENANT_A}
    created = running_server.call(f"{S}/SetConfig", {**target, "value": {"int_value": 45}})
    assert created["config"]["value"] == {"int_value": "45"}
    assert created["config"]["etag"] == "1"
    resolved = running_server.call(f"{S}/ResolveConfig", {"key": key, "tenant_id": TENANT_A})
    assert resolved == {"value": {"int_value": "45"}, "source_scope": "CONFIG_SCOPE_TENANT"}
    history = running_server.call(f"{S}/ListConfigHistory", target)
    assert history["entries"][0]["new_value"] == {"int_value": "45"}
    assert history["entries"][0]["id"].startswith("cph_")
    keys = running_server.call(f"{S}/ListConfigKeys")
    assert len(keys["keys"]) == 9


def test_bad_input_reads_clearly_in_grpcurl(running_server):
    done = running_server.grpcurl(
        f"{S}/SetConfig",
        {
            "key": "global.password_min_length",
            "scope": "CONFIG_SCOPE_PLATFORM",
            "value": {"string_value": "long"},
        },
    )
    assert done.returncode != 0
    assert "InvalidArgument" in done.stderr
    assert "global.password_min_length takes values of type integer, got string" in done.stderr
    assert "BadRequest" in done.stderr and '"field":"value"' in done.stderr.replace(" ", "")
    stale = running_server.grpcurl(
        f"{S}/SetConfig",
        {
            "key": "global.password_min_length",
            "scope": "CONFIG_SCOPE_PLATFORM",
            "value": {"int_value": 14},
            "etag": "99",
        },
    )
    assert "Aborted" in stale.stderr
