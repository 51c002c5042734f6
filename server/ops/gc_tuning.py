"""Garbage-collector settings for a serving process.

CPython starts a young-generation collection every 700 net allocations, a threshold sized
for small programs. A server fanning a change out to thousands of watch streams allocates
a burst of short-lived objects for each delivery (a future, a batch operation, a frame
resumed), all alive at once until the burst ends; collections in the middle of the burst
find them alive, promote them, and the old-generation collections that follow traverse
every object the open streams hold, again and again. Measured with 10,000 WatchFlags
streams on one process and a change a second (bench/watch.py's scale run): 92.4 µs of
server CPU per delivery and p99 1,169 ms with the default thresholds, 62.7 µs and 563 ms
with the young threshold at 10,000 (on bench/empty_server.py's fan-out: 56.5 µs, 33 µs,
and 29.7 µs with the collector off); raising the older thresholds too changed nothing
beyond noise.

So a serving process, once started: freezes what start-up built (modules, the loaded read
model: never traversed again), and collects the young generation every YOUNG_THRESHOLD
allocations. Cyclic garbage lives a little longer; nothing else changes (reference
counting frees everything else at once).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
# CPython's defaults for the two older generations' thresholds.
MIDDLE_THRESHOLD = 10
OLD_THRESHOLD = 10


def tune_for_serving() -> None:
    """Called once the process serves (start-up objects are then long-lived)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
