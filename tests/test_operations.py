"""Operability as an operator sees it: /metrics of a running server, the access log, settings."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import math
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import replace

import grpc
import psycopg
import pytest
from platform_admin.v1 import config_pb2 as pb
from platform_admin.v1 import config_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from server.app import App
from server.ops import metrics
from server.rpc.access_log import AccessLog, request_id
from server.rpc.observers import FinishedCall
from server.rpc.pipeline import AllowAll
from server.settings import Settings, SettingsError
from tests.grpcurl_server import GRPCURL, free_port, start_server, stop_server
from tests.helpers import TENANT_A, expect_error

S = "platform_admin.v1.ConfigService"
PWD = "global.password_min_length"

# Every family the README lists, with the labels it must carry.
FAMILIES = {
    "platform_admin_rpcs": "counter",
    "platform_admin_rpc_duration_seconds": "histogram",
    "platform_admin_rpcs_in_flight": "gauge",
    "platform_admin_db_pool_size": "gauge",
    "platform_admin_db_pool_max_size": "gauge",
    "platform_admin_db_pool_in_use": "gauge",
    "platform_admin_db_pool_waiting": "gauge",
    "platform_admin_database_up": "gauge",
    "platform_admin_outbox_unsequenced_rows": "gauge",
    "platform_admin_outbox_unpublished_rows": "gauge",
    "platform_admin_sequencer_lag_seconds": "gauge",
    "platform_admin_watch_subscribers": "gauge",
    "platform_admin_watch_events_sent": "counter",
    "platform_admin_watch_events_dropped": "counter",
    "platform_admin_probe_results": "counter",
    "platform_admin_probe_duration_seconds": "histogram",
    "platform_admin_read_model_age_seconds": "gauge",
}


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> {sorted labels -> value}, for every sample of the exposition."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def families(port: int) -> dict[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def value(samples, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def test_metrics_of_a_running_server_show_every_family_with_live_values(db_url, tmp_path, sql):
    port = free_port()
    server = start_server(db_url, tmp_path, {"PLATFORM_ADMIN_METRICS_LISTEN": f"127.0.0.1:{port}"})
    try:
        target = {"key": PWD, "scope": "CONFIG_SCOPE_TENANT", "tenant_id": TENANT_A}
        for n in (14, 15, 16):
            server.call(f"{S}/SetConfig", {**target, "value": {"int_value": n}})
        bad = server.grpcurl(f"{S}/GetConfig", {"key": "no.such.key"})
        assert bad.returncode != 0

        assert families(port).items() >= FAMILIES.items()
        samples = scrape(port)
        method = f"{S}/SetConfig"
        assert value(samples, "platform_admin_rpcs_total", method=method, code="OK") == 3
        assert (
            value(
                samples,
                "platform_admin_rpcs_total",
                method=f"{S}/GetConfig",
                code="INVALID_ARGUMENT",
            )
            == 1
        )
        count = value(
            samples, "platform_admin_rpc_duration_seconds_count", method=method, code="OK"
        )
        assert count == 3
        assert (
            value(samples, "platform_admin_rpc_duration_seconds_sum", method=method, code="OK") > 0
        )
        assert value(samples, "platform_admin_rpcs_in_flight", method=method) == 0
        assert value(samples, "platform_admin_database_up") == 1
        assert (
            1
            <= value(samples, "platform_admin_db_pool_size")
            <= value(samples, "platform_admin_db_pool_max_size")
        )
        assert value(samples, "platform_admin_db_pool_in_use") >= 0
        assert value(samples, "platform_admin_db_pool_waiting") == 0
        # The outbox figures are the database's: compare with a direct count.
        unsequenced = sql.execute("SELECT count(*) FROM outbox WHERE seq IS NULL").fetchone()[0]
        unpublished = sql.execute(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        ).fetchone()[0]
        assert unpublished >= 3
        assert value(samples, "platform_admin_outbox_unpublished_rows") == unpublished
        assert value(samples, "platform_admin_outbox_unsequenced_rows") <= max(unsequenced, 3)
        lag = value(samples, "platform_admin_sequencer_lag_seconds")
        assert not math.isnan(lag) and lag >= 0
        for stream in ("flags", "configs"):
            assert value(samples, "platform_admin_watch_subscribers", stream=stream) >= 0
            assert value(samples, "platform_admin_watch_events_sent_total", stream=stream) >= 0
            assert value(samples, "platform_admin_watch_events_dropped_total", stream=stream) >= 0
        for status in ("healthy", "degraded", "unhealthy"):
            assert value(samples, "platform_admin_probe_results_total", status=status) >= 0
        # Process figures an operator watches for leaks.
        assert value(samples, "process_resident_memory_bytes") > 0
        assert value(samples, "process_open_fds") > 0

        # One access-log line per call, with status and a request id, and never a token.
        server.call(
            f"{S}/ListConfigKeys",
            headers={"x-request-id": "req-42", "authorization": "Bearer not-a-real-token"},
        )
    finally:
        assert stop_server(server) == 0
    log = server.log()
    lines = [line for line in log.splitlines() if "platform_admin.access" in line]
    assert sum(f"method={S}/SetConfig status=OK" in line for line in lines) == 3
    assert any("status=INVALID_ARGUMENT" in line for line in lines)
    assert any("request_id=req-42" in line for line in lines)
    assert "not-a-real-token" not in log


async def test_access_log_json_lines_carry_the_fields(app, caplog):
    caplog.set_level(logging.INFO, logger="platform_admin.access")
    observer = AccessLog("json")
    observer.on_call_done(
        FinishedCall(
            "/x.v1.S/M",
            grpc.StatusCode.UNAVAILABLE,
            0.0123,
            None,
            (("authorization", "Bearer secret-token"), ("x-request-id", "abc\nINJECTED")),
        )
    )
    (record,) = [r for r in caplog.records if r.name == "platform_admin.access"]
    from server.ops.logs import JsonFormatter

    line = json.loads(JsonFormatter().format(record))
    assert line["method"] == "x.v1.S/M"
    assert line["status"] == "UNAVAILABLE"
    assert line["duration_ms"] == pytest.approx(12.3)
    assert line["principal"] == "-"
    assert line["request_id"] == "abc_INJECTED"
    assert line["level"] == "info"
    assert "secret-token" not in json.dumps(line)


def test_request_ids_are_generated_when_missing_and_bounded():
    generated = {request_id(()) for _ in range(1000)}
    assert len(generated) == 1000
    assert all(g == request_id((("x-request-id", g),)) for g in list(generated)[:10])
    assert request_id((("x-request-id", ""),)) not in ("", "-")
    assert len(request_id((("x-request-id", "a" * 1000),))) == 128


async def test_in_flight_and_pool_gauges_follow_a_blocked_call(db_url, settings, sql):
    """A write held by a row lock shows as in flight and as a lent connection, then clears."""
    app = App(replace(settings, lock_timeout_ms=10_000), db_url, authorizer=AllowAll())
    await app.start()
    port = await app.metrics.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = config_pb2_grpc.ConfigServiceStub(channel)
            request = pb.SetConfigRequest(
                key=PWD, scope=pb.CONFIG_SCOPE_PLATFORM, value=pb.ConfigValue(int_value=20)
            )
            method = f"{S}/SetConfig"
            with psycopg.connect(db_url, options="-c search_path=platform_admin") as locker:
                locker.execute(
                    "SELECT 1 FROM platform_configs WHERE key = %s AND scope = 'PLATFORM'"
                    " FOR UPDATE",
                    (PWD,),
                )
                call = asyncio.ensure_future(stub.SetConfig(request, timeout=20))
                for _ in range(100):
                    samples = await asyncio.to_thread(scrape, port)
                    if (
                        samples.get("platform_admin_rpcs_in_flight", {}).get((("method", method),))
                        == 1
                    ):
                        break
                    await asyncio.sleep(0.05)
                assert value(samples, "platform_admin_rpcs_in_flight", method=method) == 1
                assert value(samples, "platform_admin_db_pool_in_use") >= 1
                locker.rollback()
            answer = await call
            assert answer.config.value.int_value == 20
            samples = await asyncio.to_thread(scrape, port)
            assert value(samples, "platform_admin_rpcs_in_flight", method=method) == 0
    finally:
        await app.stop(grace=0)
        await app.metrics.stop()


async def test_event_api_moves_the_families(app):
    port = await app.metrics.start("127.0.0.1:0")
    try:
        before = await asyncio.to_thread(scrape, port)
        metrics.watch_subscribed("flags")
        metrics.watch_sent("flags", 3)
        metrics.watch_dropped("flags", 2)
        metrics.probe_result("degraded", 0.02)
        metrics.read_model_current()
        after = await asyncio.to_thread(scrape, port)
        metrics.watch_unsubscribed("flags")

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("platform_admin_watch_subscribers", stream="flags") == 1
        assert delta("platform_admin_watch_events_sent_total", stream="flags") == 3
        assert delta("platform_admin_watch_events_dropped_total", stream="flags") == 2
        assert delta("platform_admin_probe_results_total", status="degraded") == 1
        assert delta("platform_admin_probe_duration_seconds_count") == 1
        assert 0 <= value(after, "platform_admin_read_model_age_seconds") < 5
    finally:
        await app.metrics.stop()


async def test_database_up_drops_while_the_database_is_unreachable(settings):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
    app = App(
        replace(settings, pool_acquire_timeout_s=0.5),
        dead,
        health_interval_s=0.2,
        authorizer=AllowAll(),
    )
    await app.start()
    port = await app.metrics.start("127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = config_pb2_grpc.ConfigServiceStub(channel)
            await expect_error(
                stub.GetConfig(pb.GetConfigRequest(key=PWD, scope=pb.CONFIG_SCOPE_PLATFORM)),
                grpc.StatusCode.UNAVAILABLE,
            )
        samples = await asyncio.to_thread(scrape, port)
        assert value(samples, "platform_admin_database_up") == 0
        assert math.isnan(value(samples, "platform_admin_outbox_unsequenced_rows"))
    finally:
        await app.stop(grace=0)
        await app.metrics.stop()


def test_metrics_listen_setting():
    assert Settings.from_env({}).metrics_listen == "127.0.0.1:9464"
    assert Settings.from_env({"PLATFORM_ADMIN_METRICS_LISTEN": "off"}).metrics_listen is None
    assert (
        Settings.from_env({"PLATFORM_ADMIN_METRICS_LISTEN": "0.0.0.0:9100"}).metrics_listen
        == "0.0.0.0:9100"
    )
    with pytest.raises(SettingsError, match="PLATFORM_ADMIN_METRICS_LISTEN"):
        Settings.from_env({"PLATFORM_ADMIN_METRICS_LISTEN": "9464"})
    assert metrics.worker_listen("127.0.0.1:9464", 0) == "127.0.0.1:9464"
    assert metrics.worker_listen("127.0.0.1:9464", 3) == "127.0.0.1:9467"
    assert metrics.worker_listen("127.0.0.1:0", 3) == "127.0.0.1:0"


def test_each_worker_serves_metrics_on_its_own_port(db_url, tmp_path):
    base = free_port()
    while True:  # two consecutive free ports
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", base + 1))
            break
        except OSError:
            base = free_port()
    server = start_server(
        db_url,
        tmp_path,
        {"PLATFORM_ADMIN_WORKERS": "2", "PLATFORM_ADMIN_METRICS_LISTEN": f"127.0.0.1:{base}"},
    )
    try:
        for port in (base, base + 1):
            deadline = 150  # spawned workers start one after the other on a busy machine
            while True:
                try:
                    found = families(port)
                    break
                except OSError:
                    deadline -= 1
                    assert deadline, f"worker metrics on {port} never answered"
                    time.sleep(0.2)
            assert found.items() >= FAMILIES.items()
    finally:
        assert stop_server(server) == 0


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def wait_until(port: int, check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, "metric never reached the expected value"
        time.sleep(0.1)


def test_watch_prober_and_read_model_figures_are_live(db_url, tmp_path):
    endpoint = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    port = free_port()
    server = start_server(
        db_url,
        tmp_path,
        {
            "PLATFORM_ADMIN_METRICS_LISTEN": f"127.0.0.1:{port}",
            "PLATFORM_ADMIN_PROBE_ALLOWED_HOSTS": "127.0.0.1/32",
            "PLATFORM_ADMIN_PROBE_POLL_S": "0.2",
        },
    )
    watcher = None
    try:
        before = scrape(port)
        healthy_before = value(before, "platform_admin_probe_results_total", status="healthy")
        server.call(
            "platform_admin.v1.HealthService/CreateHealthSource",
            {
                "service_id": "metrics-test",
                "health_url": f"http://127.0.0.1:{endpoint.server_address[1]}/health",
            },
        )
        watcher = subprocess.Popen(
            [GRPCURL, "-plaintext", "-d", "{}", server.address, f"{S}/WatchConfigs"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            port, lambda m: value(m, "platform_admin_watch_subscribers", stream="configs") == 1
        )
        server.call(
            f"{S}/SetConfig",
            {
                "key": PWD,
                "scope": "CONFIG_SCOPE_TENANT",
                "tenant_id": TENANT_A,
                "value": {"int_value": 17},
            },
        )
        samples = wait_until(
            port,
            lambda m: (
                value(m, "platform_admin_watch_events_sent_total", stream="configs") >= 1
                and value(m, "platform_admin_probe_results_total", status="healthy")
                > healthy_before
            ),
        )
        assert value(samples, "platform_admin_probe_duration_seconds_count") >= 1
        age = value(samples, "platform_admin_read_model_age_seconds")
        assert not math.isnan(age) and 0 <= age < 5
        watcher.terminate()
        watcher.wait(10)
        wait_until(
            port, lambda m: value(m, "platform_admin_watch_subscribers", stream="configs") == 0
        )
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        endpoint.shutdown()
        endpoint.server_close()
        assert stop_server(server) == 0


def test_access_log_setting_chooses_which_calls_are_logged(caplog):
    assert Settings.from_env({}).access_log and not Settings.from_env({}).access_log_hot_reads
    every = Settings.from_env({"PLATFORM_ADMIN_ACCESS_LOG": "all"})
    assert every.access_log and every.access_log_hot_reads
    assert not Settings.from_env({"PLATFORM_ADMIN_ACCESS_LOG": "false"}).access_log
    with pytest.raises(SettingsError, match="PLATFORM_ADMIN_ACCESS_LOG"):
        Settings.from_env({"PLATFORM_ADMIN_ACCESS_LOG": "some"})

    caplog.set_level(logging.INFO, logger="platform_admin.access")
    hot = "/platform_admin.v1.FlagService/EvaluateFlag"
    for observer in (AccessLog("text"), AccessLog("text", hot_reads=True)):
        observer.on_call_done(FinishedCall(hot, grpc.StatusCode.OK, 0.001, None, ()))
        observer.on_call_done(FinishedCall(hot, grpc.StatusCode.NOT_FOUND, 0.001, None, ()))
    lines = [r.getMessage() for r in caplog.records if r.name == "platform_admin.access"]
    # Default: the failure only; "all": both calls.
    assert [("status=OK" in line) for line in lines] == [False, True, False]
