"""Two replicas, each running the sequencer, under concurrent writers with rollbacks."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import grpc
import psycopg

from server.app import App
from server.settings import Settings
from tests.watch_helpers import Watcher, change_flag, channel_to, commit_flag, replica, watch

KEYS = [f"flag-{i}" for i in range(8)]
WRITERS = 20
ROUNDS = 8


async def _writer(db_url: str, rng: random.Random, committed: list[tuple[str, int]]) -> int:
    """Changes random flags with random delays inside the transaction; rolls some back."""
    rolled_back = 0
    async with await psycopg.AsyncConnection.connect(
        db_url, options="-c search_path=platform_admin"
    ) as conn:
        for _ in range(ROUNDS):
            await asyncio.sleep(rng.uniform(0, 0.02))
            key = rng.choice(KEYS)
            version = await change_flag(conn, key, f"by writer {rng.random():.6f}")
            await asyncio.sleep(rng.uniform(0, 0.03))  # the commit comes late, or never
            if rng.random() < 0.2:
                await conn.rollback()
                rolled_back += 1
            else:
                await conn.commit()
                committed.append((key, version))
    return rolled_back


async def test_concurrent_writers_two_replicas_every_change_exactly_once(
    app: App, channel: grpc.aio.Channel, db_url: str, settings: Settings, sql: psycopg.Connection
) -> None:
    for key in KEYS:
        await commit_flag(db_url, key)
    async with replica(db_url, settings) as other, channel_to(other) as other_channel:
        watchers: list[Watcher] = []
        for ch in (channel, other_channel):
            for _ in range(3):
                watchers.append(watch(ch))
        for w in watchers:
            await w.until(lambda w: w.snapshot_done())
            assert w.snapshot() == dict.fromkeys(KEYS, 1)

        rng = random.Random(4)
        committed: list[tuple[str, int]] = []
        writers = [
            asyncio.create_task(_writer(db_url, random.Random(rng.random()), committed))
            for _ in range(WRITERS)
        ]
        await asyncio.sleep(0.15)
        # A late joiner on the other replica resumes from a cursor taken mid-way.
        first = watchers[3]
        await first.until(lambda w: len(w.changes()) >= 1)
        mark = len(first.changes())
        at_mark = [m for m in first.messages if m.kind == "flag_changed"][mark - 1]
        # The late joiner must receive exactly what the first one got after that cursor.
        late = watch(channel, cursor=at_mark.cursor)
        rolled_back = sum(await asyncio.gather(*writers))
        assert rolled_back > 0, "the scenario must include rollbacks"

        final = dict(sql.execute("SELECT key, version FROM feature_flags").fetchall())
        assert len(committed) + rolled_back == WRITERS * ROUNDS
        for w in [*watchers, late]:
            await w.until(lambda w: all(w.state().get(k) == v for k, v in final.items()), 20)
        await asyncio.sleep(0.3)  # anything extra (a duplicate, a rolled-back change) shows up

        expected = Counter(committed)
        for w in watchers:
            got = Counter(w.changes())
            assert got == expected, (got - expected, expected - got)
            # Per flag, versions arrive in increasing order.
            for key in KEYS:
                versions = [v for k, v in w.changes() if k == key]
                assert versions == sorted(versions) == list(range(2, final[key] + 1))
        assert late.changes() == first.changes()[mark:]
        for w in [*watchers, late]:
            await w.stop()
        # Both replicas sequenced (the lock lets one at a time work): every row has a seq.
        assert sql.execute("SELECT count(*) FROM outbox WHERE seq IS NULL").fetchone()[0] == 0
        seqs = [r[0] for r in sql.execute("SELECT seq FROM outbox ORDER BY created_at")]
        assert len(set(seqs)) == len(seqs)
