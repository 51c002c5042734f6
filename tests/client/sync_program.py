"""A plain synchronous service (no event loop of its own) using the client end to end.

Run by test_client_sync_program.py as ``python sync_program.py TARGET TENANT SOURCE_ID``.
It prints one JSON line per step and waits on stdin for the test to make a change.
"""

from __future__ import annotations

import json
import sys
import threading

from platform_admin_client import Change, Client


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    target, tenant, source_id = sys.argv[1:4]
    changed = threading.Event()
    versions: list[int] = []

    def on_change(change: Change) -> None:
        versions.append(change.state.version if change.state else 0)
        changed.set()

    with Client(target, heartbeat_interval_s=1.0) as client:
        ready = client.wait_ready(15)
        client.on_change(on_change, keys=["sync.flag"])
        say(
            step="ready",
            ready=ready,
            state=client.state.value,
            on=client.is_enabled("sync.flag", tenant),
            idle=client.config("global.session_idle_minutes", tenant),
        )
        client.report_heartbeats("billing", every_s=0.2)
        recorded = client.record_check_result(source_id, "DEGRADED", {"latency_ms": 12})
        say(step="recorded", status=recorded.result.status)
        sys.stdin.readline()  # the test has changed the flag
        got = changed.wait(15)
        say(step="changed", got=got, on=client.is_enabled("sync.flag", tenant), versions=versions)


if __name__ == "__main__":
    main()
