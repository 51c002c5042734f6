"""Pure health rules: URL checks, the allow-list, result mapping, flap damping, aggregation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.errors import InvalidArgument
from domain.health import (
    DEFAULT_ALLOWED_HOSTS,
    AllowList,
    Damping,
    Status,
    apply_result,
    check_details,
    check_target_allowed,
    effective_status,
    grpc_status_of,
    http_status_of,
    is_stale,
    parse_health_url,
    worst,
)

H, D, U = Status.HEALTHY, Status.DEGRADED, Status.UNHEALTHY


def run(results: list[Status], failure_threshold: int, success_threshold: int) -> list:
    state = Damping(None)
    seen = []
    for result in results:
        state = apply_result(state, result, failure_threshold, success_threshold)
        seen.append(state.status)
    return seen


def test_failure_threshold_consecutive_failures_before_unhealthy():
    assert run([H, U, U, H, U, U, U], 3, 1) == [H, H, H, H, H, H, U]


def test_success_threshold_consecutive_goods_before_recovering():
    assert run([U, U, H, U, H, H], 2, 2) == [None, U, U, U, U, H]


def test_degraded_counts_as_good_for_recovery_and_is_followed_at_once_when_up():
    assert run([H, D, H, U, D, D], 1, 2) == [None, D, H, U, U, D]


def test_a_new_source_waits_for_the_thresholds_too():
    assert run([U], 2, 1) == [None]
    assert run([U, U], 2, 1) == [None, U]


def test_parse_health_url_accepts_the_three_schemes():
    grpc_target = parse_health_url("f", "grpc://Billing.internal:9000/billing.v1.Billing")
    assert (grpc_target.host, grpc_target.port, grpc_target.grpc_service) == (
        "billing.internal",
        9000,
        "billing.v1.Billing",
    )
    assert parse_health_url("f", "https://[::1]/healthz").port == 443
    assert parse_health_url("f", "http://10.1.2.3/h").host_port == "10.1.2.3:80"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "healthz",
        "mailto:a@b.c",
        "ws://h/x",
        "http://",
        "http://h:0/",
        "grpc://h/x/y:1",
        "http://h/ x",
        "grpc://h:1/a/b",
    ],
)
def test_parse_health_url_rejects(url):
    with pytest.raises(InvalidArgument) as caught:
        parse_health_url("health_url", url)
    assert caught.value.violations[0].field == "health_url"


def test_allow_list_networks_names_and_wildcards():
    allow = AllowList.parse("10.0.0.0/8, *.svc.cluster.local, status.example.com, ::1")
    assert allow.allows_address("10.9.8.7") and not allow.allows_address("11.0.0.1")
    assert allow.allows_address("::1") and allow.allows_address("::ffff:10.0.0.1")
    assert not allow.allows_address("169.254.169.254")
    assert allow.allows_name("billing.prod.svc.cluster.local")
    assert allow.allows_name("STATUS.example.com") and not allow.allows_name("example.com")
    assert AllowList.parse("*").allows_address("8.8.8.8")
    with pytest.raises(ValueError, match="not_a host"):
        AllowList.parse("10.0.0.0/8,not_a host")


def test_default_allow_list_keeps_out_metadata_and_public_addresses():
    allow = AllowList.parse(DEFAULT_ALLOWED_HOSTS)
    for ok in ("127.0.0.1", "10.0.0.1", "172.16.5.5", "192.168.1.1", "::1", "fd00::1"):
        assert allow.allows_address(ok)
    for bad in ("169.254.169.254", "8.8.8.8", "fe80::1", "100.64.0.1"):
        assert not allow.allows_address(bad)
    with pytest.raises(InvalidArgument):
        check_target_allowed("u", parse_health_url("u", "http://169.254.169.254/"), allow)
    check_target_allowed("u", parse_health_url("u", "http://metadata.internal/"), allow)
    local = parse_health_url("u", "http://localhost:8080/h")
    check_target_allowed("u", local, allow)
    check_target_allowed("u", local, AllowList.parse("localhost"))
    with pytest.raises(InvalidArgument):
        check_target_allowed("u", local, AllowList.parse("10.0.0.0/8"))


def test_http_and_grpc_mapping():
    assert http_status_of(204, b"", False)[0] is H
    assert http_status_of(200, b'{"status":"DEGRADED"}', False)[0] is D
    assert http_status_of(200, b'{"status":"degraded"', False)[0] is H  # not JSON
    assert http_status_of(200, b'["degraded"]', False)[0] is H
    assert http_status_of(200, b'{"status":"degraded"}', True)[0] is H  # truncated: unknown
    assert http_status_of(503, b'{"status":"degraded"}', False)[0] is U
    assert http_status_of(302, b"", False)[0] is U
    assert [grpc_status_of(s) for s in ("SERVING", "NOT_SERVING", "UNKNOWN")] == [H, U, D]


def test_details_limits():
    assert check_details("d", {"a": [1, {"b": 2.5}]}) == {"a": [1, {"b": 2.5}]}
    for bad in ([1], "x", {"n": float("nan")}, {"x": "é" * 8200}):
        with pytest.raises(InvalidArgument):
            check_details("d", bad)


def test_staleness_and_worst():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert not is_stale(now - timedelta(seconds=60), 60, now)
    assert is_stale(now - timedelta(seconds=61), 60, now)
    assert effective_status(H, True) is U and effective_status(None, False) is None
    assert worst([]) is H and worst([None]) is H
    assert worst([H, None, D]) is D and worst([D, U, H]) is U


def test_probe_settings_are_validated_at_start():
    from server.settings import Settings, SettingsError

    defaults = Settings.from_env({})
    assert defaults.probe_allowed_hosts == DEFAULT_ALLOWED_HOSTS
    assert (defaults.probe_timeout_s, defaults.probe_enabled) == (5.0, True)
    narrowed = Settings.from_env(
        {"PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS": " 10.20.0.0/16 , *.svc.cluster.local "}
    )
    assert narrowed.probe_allowed_hosts == ("10.20.0.0/16", "*.svc.cluster.local")
    with pytest.raises(SettingsError, match="PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS"):
        Settings.from_env({"PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS": "10.0.0.0/8,http://x"})
    with pytest.raises(SettingsError, match="PLATFORM_ADMIN_PROBE_TIMEOUT_S"):
        Settings.from_env({"PLATFORM_ADMIN_PROBE_TIMEOUT_S": "0"})
