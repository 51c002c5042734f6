"""Change events: the outbox JSON shape is the events module's, and stays what it was.

``STORED`` holds outbox rows exactly as the release before typed events wrote them (subject,
tenant column, payload and headers as PostgreSQL prints them: flags created, overridden,
updated and archived; configs at each scope and value type; a health source created,
updated, changing status twice and deleted). Each must decode to its typed
event and encode back to the same JSON, and the typed stream must read them as they are.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from domain import events
from domain.config_keys import Scope
from domain.events import (
    ConfigChanged,
    FlagChanged,
    HealthChange,
    HealthSourceChanged,
    UndecodableEvent,
)
from domain.health import Status
from server.app import pool_settings
from server.settings import Settings
from storage import stream
from storage.db import Database

# One JSON array per line: [subject, tenant_id, payload text, headers text].
_ROWS = Path(__file__).parent / "data" / "outbox_rows_before_typed_events.jsonl"
STORED = [tuple(json.loads(line)) for line in _ROWS.read_text().splitlines() if line]


@pytest.mark.parametrize(("subject", "tenant_id", "payload", "headers"), STORED)
def test_stored_rows_decode_and_encode_back_to_the_same_json(
    subject: str, tenant_id: str | None, payload: str, headers: str
) -> None:
    change = events.decode(subject, json.loads(payload))
    assert change.subject == subject
    assert change.tenant_id == tenant_id
    assert change.to_payload() == json.loads(payload)
    assert events.headers(events.changed_by(json.loads(headers))) == json.loads(headers)


def test_decoded_rows_carry_typed_values() -> None:
    decoded = [events.decode(s, json.loads(p)) for s, _, p, _ in STORED]
    flags = [c for c in decoded if isinstance(c, FlagChanged)]
    assert [f.version for f in flags] == [1, 2, 3, 4, 5]
    assert flags[2].enabled_tenant_ids == ("01JA0000000000000000000AAA",)
    assert flags[2].disabled_tenant_ids == ("01JA0000000000000000000BBB",)
    assert flags[4].archived and flags[4].default_enabled
    assert flags[1].update_time > flags[0].create_time == flags[1].create_time
    configs = [c for c in decoded if isinstance(c, ConfigChanged)]
    assert [(c.scope, c.value) for c in configs] == [
        (Scope.PLATFORM, 14),
        (Scope.TENANT, 16),
        (Scope.NODE, "relay.local"),
        (Scope.TENANT, True),
        (Scope.TENANT, True),
    ]
    assert type(configs[3].value) is bool and configs[4].archived
    health = [c for c in decoded if isinstance(c, HealthSourceChanged)]
    assert [h.change for h in health] == [
        HealthChange.CREATED,
        HealthChange.UPDATED,
        HealthChange.STATUS_CHANGED,
        HealthChange.STATUS_CHANGED,
        HealthChange.DELETED,
    ]
    assert health[2].previous_status is None and health[2].source.status is Status.HEALTHY
    assert health[3].previous_status is Status.HEALTHY
    assert health[3].result_id is not None and health[3].result_id.startswith("hcr_")
    assert health[0].source.status is None and health[1].source.check_interval_s == 15


def test_a_payload_that_does_not_fit_is_refused_with_its_subject() -> None:
    with pytest.raises(UndecodableEvent, match=re.escape(events.FLAG_CHANGED)):
        events.decode(events.FLAG_CHANGED, {"key": "f", "version": 1})
    with pytest.raises(UndecodableEvent, match="unknown subject"):
        events.decode("platform_admin.tenant.changed", {})


async def test_the_stream_reads_stored_rows_and_writes_them_back_byte_for_byte(
    db_url: str, settings: Settings, sql: psycopg.Connection
) -> None:
    for i, (subject, tenant_id, payload, headers) in enumerate(STORED):
        sql.execute(
            "INSERT INTO outbox (id, tenant_id, subject, payload, headers)"
            " VALUES (%s, %s, %s, %s::jsonb, %s::jsonb)",
            (f"01JA00000000000000000000{i:02d}", tenant_id, subject, payload, headers),
        )
    db = Database(pool_settings(replace(settings), db_url))
    await db.open()
    try:
        await stream.sequence_batch(db, notify=False)
        read = await stream.read_after(db, 0)
    finally:
        await db.close()
    assert [e.subject for e in read] == [s for s, _, _, _ in STORED]
    assert [e.tenant_id for e in read] == [t for _, t, _, _ in STORED]
    assert [e.changed_by for e in read] == [json.loads(h)["changed_by"] for *_, h in STORED]
    assert [e.id for e in read] == [f"01JA00000000000000000000{i:02d}" for i in range(len(STORED))]
    # Encoded again, PostgreSQL stores exactly the text it stored before.
    for event, (_, _, payload, _) in zip(read, STORED, strict=True):
        again = sql.execute("SELECT %s::jsonb::text", (Jsonb(event.change.to_payload()),))
        assert again.fetchone()[0] == payload
