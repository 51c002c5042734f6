"""An operator subscribes with grpcurl and sees the snapshot, then another client's change."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from typing import Any

import pytest

from tests.grpcurl_server import GRPCURL, RunningServer

pytestmark = pytest.mark.grpcurl


class Subscription:
    """grpcurl streaming WatchFlags; JSON messages parsed as they arrive."""

    def __init__(self, server: RunningServer, request: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [
                GRPCURL,
                "-plaintext",
                "-d",
                json.dumps(request),
                server.address,
                "platform_admin.v1.FlagService/WatchFlags",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.messages: list[dict[str, Any]] = []
        self._text = ""
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def until(self, done: Any, timeout: float = 20) -> None:
        decoder = json.JSONDecoder()
        deadline = time.monotonic() + timeout
        while not done(self.messages):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; grpcurl printed {self.messages}"
            try:
                self._text += self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                assert self.process.poll() is None, self.process.stderr
                continue
            stripped = self._text.lstrip()
            try:
                message, end = decoder.raw_decode(stripped)
            except json.JSONDecodeError:
                continue  # the object is not complete yet
            self.messages.append(message)
            self._text = stripped[end:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._pump_thread.join(10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def test_grpcurl_subscribes_and_prints_snapshot_and_change(
    running_server: RunningServer,
) -> None:
    running_server.call(
        "platform_admin.v1.FlagService/CreateFlag", {"key": "checkout.v2", "description": "new"}
    )
    sub = Subscription(running_server, {})
    try:
        sub.until(lambda ms: any("snapshot_end" in m for m in ms))
        snapshot = [m["snapshot"] for m in sub.messages if "snapshot" in m]
        assert [(f["key"], f["etag"]) for f in snapshot] == [("checkout.v2", "1")]
        end = next(m for m in sub.messages if "snapshot_end" in m)
        assert end["cursor"] and end["snapshot_end"]["count"] == "1"

        # Another client changes the flag; the subscriber prints the full new state.
        running_server.call(
            "platform_admin.v1.FlagService/SetTenantOverride",
            {
                "key": "checkout.v2",
                "tenantId": "01JA0000000000000000000AAA",
                "override": "TENANT_OVERRIDE_ENABLED",
            },
        )
        sub.until(lambda ms: any("flag_changed" in m for m in ms))
        change = next(m for m in sub.messages if "flag_changed" in m)
        assert change["flag_changed"]["key"] == "checkout.v2"
        assert change["flag_changed"]["etag"] == "2"
        assert change["flag_changed"]["enabled_tenant_ids"] == ["01JA0000000000000000000AAA"]
        assert change["cursor"] and change["cursor"] != end["cursor"]
    finally:
        sub.stop()

    # Resuming with the printed cursor prints nothing old, only what follows.
    resumed = Subscription(running_server, {"cursor": change["cursor"]})
    try:
        running_server.call("platform_admin.v1.FlagService/CreateFlag", {"key": "search.beta"})
        resumed.until(lambda ms: len(ms) >= 1)
        assert [m["flag_changed"]["key"] for m in resumed.messages] == ["search.beta"]
    finally:
        resumed.stop()
