"""The local copy: every flag and config row, and the tables the in-process answers read.

Writes happen on the client's event-loop thread only; reads come from any thread and
take no lock: each answer reads one dictionary that is either updated one key at a time
(a single, atomic assignment) or replaced whole by a resync, so a reader sees the old
state or the new one, never a mixture.

Flags are answered through a per-flag entry derived once, when the flag changes, from
:func:`domain.flags.evaluate` (the server's rule): the evaluation of a tenant named in
neither list, and that of every named tenant. ``is_enabled`` is then one dictionary
look-up and one set membership test. Configs are resolved by the server's read-model
state (:class:`domain.read_state.ReadState`), NODE > TENANT > PLATFORM > default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from domain.config_keys import ConfigKeySpec
from domain.read_state import ConfigState, FlagState, ReadState
from platform_admin_client import convert

SNAPSHOT_FORMAT = 1

ConfigIdentity = tuple[str, Any, str | None, str | None]


@dataclass(frozen=True, slots=True)
class FlagEntry:
    """What the hot path needs of one flag.

    ``flips`` holds the tenants whose answer differs from ``on`` (the answer for a tenant
    named in neither list), so ``is_enabled`` is ``on`` xor membership. ``evaluate`` (with
    the reason) runs the domain rule on ``state`` itself.
    """

    on: bool
    flips: frozenset[str]
    state: FlagState


_NO_TENANTS: frozenset[str] = frozenset()


def flag_entry(state: FlagState) -> FlagEntry:
    on = state.default_evaluation().enabled
    tenants = {*state.enabled, *state.disabled}
    if not tenants:
        return FlagEntry(on, _NO_TENANTS, state)
    flips = frozenset(t for t in tenants if state.evaluate(t).enabled is not on)
    return FlagEntry(on, flips or _NO_TENANTS, state)


@dataclass(frozen=True, slots=True)
class Change:
    """One change delivered to ``on_change`` listeners.

    ``state`` is the new state (None when a resync found the row gone); ``cursor`` the
    stream position of the message that carried it ("" when it came from a resync or
    from catching up a bootstrap snapshot through a fresh snapshot).
    """

    kind: str  # "flag" or "config"
    key: str
    state: FlagState | ConfigState | None
    cursor: str


class FlagTable:
    """The flags by key: each one's state (its version dedupes replays) and hot-path entry."""

    def __init__(self, states: Iterable[FlagState] = ()) -> None:
        self.entries: dict[str, FlagEntry] = {}
        for state in states:
            self.apply(state)

    def apply(self, state: FlagState) -> bool:
        """Takes ``state`` if newer than the one held; True when it changed anything."""
        old = self.entries.get(state.key)
        if old is not None and old.state.version >= state.version:
            return False
        self.entries[state.key] = flag_entry(state)
        return True

    def states(self) -> dict[str, FlagState]:
        return {key: entry.state for key, entry in self.entries.items()}


class ConfigTable:
    """The config rows and, per scope, the live values resolution reads."""

    def __init__(self, states: Iterable[ConfigState] = ()) -> None:
        self.read = ReadState()
        for state in states:
            self.apply(state)

    def apply(self, state: ConfigState) -> bool:
        old = self.read.configs.get(state.identity)
        if old is not None and old.version >= state.version:
            return False
        self.read.apply_config(state)
        return True

    def states(self) -> dict[ConfigIdentity, ConfigState]:
        return self.read.configs


def flag_differences(old: FlagTable, new: FlagTable) -> list[Change]:
    """One change per flag whose state differs between two tables, ordered by key."""
    before, after = old.states(), new.states()
    changes = []
    for key in sorted(before.keys() | after.keys()):
        was, now = before.get(key), after.get(key)
        if was is None or now is None or was.version != now.version:
            changes.append(Change("flag", key, now, ""))
    return changes


def config_differences(old: ConfigTable, new: ConfigTable) -> list[Change]:
    before, after = old.states(), new.states()
    changes = []
    for identity in sorted(before.keys() | after.keys(), key=_sort_key):
        was, now = before.get(identity), after.get(identity)
        if was is None or now is None or was.version != now.version:
            changes.append(Change("config", identity[0], now, ""))
    return changes


def _sort_key(identity: ConfigIdentity) -> tuple[str, str, str, str]:
    key, scope, tenant, node = identity
    return (key, str(scope), tenant or "", node or "")


class LocalCopy:
    """Flags, configs, the config keys' typing, and the stream cursors they stand at."""

    def __init__(self) -> None:
        self.flags = FlagTable()
        self.configs = ConfigTable()
        self.specs: dict[str, ConfigKeySpec] = {}
        self.flags_cursor = ""
        self.configs_cursor = ""
        self.flags_loaded = False  # a snapshot (from the server or a file) was taken in
        self.configs_loaded = False

    def to_json(self) -> dict[str, Any]:
        """The whole copy as saved by ``save_snapshot`` (call on the loop thread)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "flags_cursor": self.flags_cursor if self.flags_loaded else "",
            "configs_cursor": self.configs_cursor if self.configs_loaded else "",
            "flags": [convert.flag_to_json(s) for s in self.flags.states().values()],
            "configs": [convert.config_to_json(s) for s in self.configs.states().values()],
            "config_keys": [convert.spec_to_json(s) for s in self.specs.values()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalCopy:
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported snapshot format {data.get('format')!r}")
        copy = cls()
        copy.flags = FlagTable(convert.flag_from_json(f) for f in data["flags"])
        copy.configs = ConfigTable(convert.config_from_json(c) for c in data["configs"])
        copy.specs = {
            spec.key: spec for spec in (convert.spec_from_json(k) for k in data["config_keys"])
        }
        copy.flags_cursor = str(data.get("flags_cursor") or "")
        copy.configs_cursor = str(data.get("configs_cursor") or "")
        copy.flags_loaded = copy.configs_loaded = True
        return copy
