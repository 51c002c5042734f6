"""A serving process whose relay dies by SIGKILL between publishing a batch and marking it.

Run as ``python -m tests.faults.relay_victim DB_URL NATS_URL REPORT KILL_AFTER``. Once its
relay leads it writes ``REPORT.leader``; when it is about to mark the batch that brings
its published total to KILL_AFTER rows, it writes that batch's outbox ids to REPORT and
kills itself with SIGKILL: those rows are on JetStream but not marked in the outbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from server.app import App
from server.rpc.pipeline import AllowAll
from tests.bus_helpers import bus_settings
from tests.conftest import TEST_SETTINGS


async def main(db_url: str, nats_url: str, report: Path, kill_after: int) -> None:
    settings = bus_settings(replace(TEST_SETTINGS, probe_enabled=False), nats_url)
    app = App(settings, db_url, authorizer=AllowAll())
    await app.start()
    assert app.bus is not None
    relay = app.bus.relay
    mark = relay.mark
    published = 0

    async def mark_or_die(ids: list[str]) -> None:
        nonlocal published
        published += len(ids)
        if published >= kill_after:
            report.write_text(json.dumps(ids))  # noqa: ASYNC240 (the process ends here)
            os.kill(os.getpid(), signal.SIGKILL)
        await mark(ids)

    relay.mark = mark_or_die
    while not relay.leader:  # noqa: ASYNC110 (the relay sets a plain flag)
        await asyncio.sleep(0.05)
    Path(f"{report}.leader").write_text(str(os.getpid()))  # noqa: ASYNC240
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])))
