"""FlagService as an operator drives it: the real grpcurl over reflection, no proto files."""

from __future__ import annotations

import json

import pytest

from tests.helpers import TENANT_A, TENANT_B

pytestmark = pytest.mark.grpcurl
S = "platform_admin.v1.FlagService"


def test_reflection_and_health_know_the_flag_service(running_server):
    listed = running_server.grpcurl("list")
    assert listed.returncode == 0, listed.stderr
    assert S in listed.stdout.split()
    described = running_server.grpcurl(f"describe {S}")
    assert described.returncode == 0, described.stderr
    for rpc in (
        "CreateFlag",
        "GetFlag",
        "ListFlags",
        "UpdateFlag",
        "SetTenantOverride",
        "ArchiveFlag",
        "UnarchiveFlag",
        "EvaluateFlag",
        "EvaluateFlags",
    ):
        assert f"rpc {rpc} ( .platform_admin.v1.{rpc}Request )" in described.stdout
    assert "rpc WatchFlags ( .platform_admin.v1.WatchFlagsRequest ) returns ( stream" in (
        described.stdout
    )
    health = running_server.call("grpc.health.v1.Health/Check", {"service": S})
    assert health == {"status": "SERVING"}


def test_flag_lifecycle_through_grpcurl(running_server):
    key = "checkout.new-flow"
    created = running_server.call(
        f"{S}/CreateFlag", {"key": key, "description": "New checkout", "default_enabled": False}
    )
    assert created["flag"]["key"] == key and created["flag"]["etag"] == "1"

    on = running_server.call(
        f"{S}/SetTenantOverride",
        {"key": key, "tenant_id": TENANT_A, "override": "TENANT_OVERRIDE_ENABLED", "etag": "1"},
    )
    assert on["flag"]["enabled_tenant_ids"] == [TENANT_A] and on["flag"]["etag"] == "2"
    off = running_server.call(
        f"{S}/SetTenantOverride",
        {"key": key, "tenant_id": TENANT_B, "override": "TENANT_OVERRIDE_DISABLED"},
    )
    assert off["flag"]["disabled_tenant_ids"] == [TENANT_B]

    one = running_server.call(f"{S}/EvaluateFlag", {"key": key, "tenant_id": TENANT_A})
    assert one == {"enabled": True, "reason": "EVALUATION_REASON_TENANT_ENABLED"}
    # grpcurl leaves out default values: enabled=false does not appear.
    other = running_server.call(f"{S}/EvaluateFlag", {"key": key, "tenant_id": TENANT_B})
    assert other == {"reason": "EVALUATION_REASON_TENANT_DISABLED"}

    updated = running_server.call(
        f"{S}/UpdateFlag",
        {
            "key": key,
            "default_enabled": True,
            "update_mask": {"paths": ["default_enabled"]},
            "etag": "3",
        },
    )
    assert updated["flag"]["default_enabled"] is True
    assert updated["flag"]["description"] == "New checkout"

    batch = running_server.call(
        f"{S}/EvaluateFlags",
        {"tenant_id": "01JC0000000000000000000CCC", "keys": [key, "missing.flag"]},
    )
    assert batch == {
        "evaluations": {key: {"enabled": True, "reason": "EVALUATION_REASON_DEFAULT"}},
        "missing_keys": ["missing.flag"],
    }

    archived = running_server.call(f"{S}/ArchiveFlag", {"key": key})
    assert archived["flag"]["archived"] is True
    assert running_server.call(f"{S}/ListFlags") == {}
    listed = running_server.call(f"{S}/ListFlags", {"show_archived": True, "page_size": 10})
    assert [f["key"] for f in listed["flags"]] == [key]
    restored = running_server.call(f"{S}/UnarchiveFlag", {"key": key, "etag": "5"})
    assert "archived" not in restored["flag"] and restored["flag"]["etag"] == "6"
    got = running_server.call(f"{S}/GetFlag", {"key": key})
    assert got == restored


def test_bad_flag_input_reads_clearly_in_grpcurl(running_server):
    bad_key = running_server.grpcurl(f"{S}/CreateFlag", {"key": "Checkout"})
    assert bad_key.returncode != 0
    assert "InvalidArgument" in bad_key.stderr
    assert "must match ^[a-z][a-z0-9_.-]{0,99}$" in bad_key.stderr
    compact = bad_key.stderr.replace(" ", "")
    assert "BadRequest" in bad_key.stderr and '"field":"key"' in compact

    running_server.call(f"{S}/CreateFlag", {"key": "ok"})
    mask = running_server.grpcurl(
        f"{S}/UpdateFlag", {"key": "ok", "description": "x", "update_mask": {"paths": ["key"]}}
    )
    assert "InvalidArgument" in mask.stderr and "update_mask: 'key' is immutable" in mask.stderr
    unspecified = running_server.grpcurl(
        f"{S}/SetTenantOverride", {"key": "ok", "tenant_id": TENANT_A}
    )
    assert "InvalidArgument" in unspecified.stderr and "override: is required" in unspecified.stderr
    missing = running_server.grpcurl(f"{S}/GetFlag", {"key": "absent"})
    assert "NotFound" in missing.stderr and "flag absent does not exist" in missing.stderr
    # Nothing of the above was stored: only the one valid flag exists, at version 1.
    listed = running_server.call(f"{S}/ListFlags", {"show_archived": True})
    assert [(f["key"], f["etag"]) for f in listed["flags"]] == [("ok", "1")]
    assert json.dumps(listed)  # plain JSON an operator can pipe on
