"""The client's state machine.

READY: both streams (flags and configs) are connected, past their snapshot, and have
heard from the server (a change or a heartbeat) within twice the heartbeat interval.
STALE: anything short of that: not connected yet, reconnecting, or silent too long.
Answers keep coming from the last state held. ERROR: the server refused the client
(a bad or expired token, a role that may not watch): it needs a person, not a retry;
the client still answers from what it holds and retries rarely.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    READY = "READY"
    STALE = "STALE"
    ERROR = "ERROR"
