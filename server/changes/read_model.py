"""The in-memory read model: Evaluate* and Resolve* answer from memory, never from SQL.

Each server process holds every flag and config (domain/read_state.py). It is loaded at
start from one REPEATABLE READ snapshot with the head seq (storage/bulk_load.py) and kept
current by a subscription to the change feed (server/changes/feed.py), like every other
consumer of the stream: events after that head are applied in seq order, each taken only
when its version is newer than the one held. Write RPCs also apply the event their write
returns (version-guarded), so a client reads its own write from the same process at once;
other processes converge within the tail latency (sequencer cadence plus one NOTIFY round
trip). When the stream cannot continue (events pruned before this process read them) the
model reloads from a snapshot and subscribes again from its head.

If the database goes away the model keeps answering from the last state it holds;
``current_at`` stops advancing, which the health check and the
``platform_admin_read_model_age_seconds`` gauge report (server/app.py).

Answers are precomputed where that pays:

* EvaluateFlag has five possible responses; they are allocated once and shared.
* EvaluateFlags for every live flag is the encoded "defaults" response (rebuilt when a
  flag's default, archiving or existence changes) followed by the encoding of the
  tenant's few overrides. Protobuf defines concatenated encodings as a merge, and a later
  map entry for a key replaces an earlier one, so the client decodes exactly the tenant's
  answers; the per-tenant part is cached and dropped when a change names that tenant.
* Other EvaluateFlags and ResolveConfig(s) answers are cached per tenant and request, and
  dropped when a change could alter them (tenant list, tenant or node row, or anything
  that affects every tenant).

Cached answers are encoded bytes: the pipeline hands bytes to gRPC unchanged
(server/rpc/encoded.py), so a hot call neither builds nor serializes a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from platform_admin.v1 import config_pb2, flag_pb2

from domain import events
from domain import read_state as rm
from domain.config_keys import ConfigKeySpec, ConfigValue, Scope
from domain.errors import NotFound, Unavailable
from domain.events import ChangeEvent, ConfigChanged, FlagChanged
from domain.flags import Evaluation, Reason
from server.changes.feed import ChangeFeed, Expired, Live, Subscription
from server.rpc.convert import REASON_TO_PROTO, source_scope_to_proto, value_to_proto
from storage import stream
from storage.bulk_load import load_all
from storage.db import Database

log = logging.getLogger(__name__)
# Every EvaluateFlag answer there can be, allocated once (never mutated after this).
_EVALUATE_RESPONSES = {
    Evaluation(enabled, reason): flag_pb2.EvaluateFlagResponse(
        enabled=enabled, reason=REASON_TO_PROTO[reason]
    )
    for enabled in (False, True)
    for reason in Reason
}
_EVALUATIONS = {
    evaluation: flag_pb2.Evaluation(
        enabled=evaluation.enabled, reason=REASON_TO_PROTO[evaluation.reason]
    )
    for evaluation in _EVALUATE_RESPONSES
}
# How long the model may go without catching up with the stream before it reports itself
# stale (the tail polls every 0.25 s and is woken at once by each NOTIFY).
STALE_AFTER_S = 5.0
# Bound of each answer cache (per process, there are two: flags and configs), in bytes of
# cached answers plus a fixed cost per entry: past it the cache starts over. A tenant's
# share is bounded too, so one tenant's questions cannot evict everybody else's.
ANSWER_CACHE_BYTES = 16 * 1024 * 1024
MAX_ANSWERS_PER_TENANT = 64
# An answer larger than this (a thousand found keys is ~30 KB) is answered, not cached.
MAX_CACHED_ANSWER_BYTES = 64 * 1024
# What an entry costs beyond its encoded bytes: dict slots, the key tuple, object headers.
_ENTRY_OVERHEAD_BYTES = 200
_RETRY_START_S = 0.1
_RETRY_MAX_S = 5.0

CacheKey = tuple[Any, ...]


def keys_digest(keys: Sequence[str]) -> CacheKey:
    """A fixed-size cache key for a list of flag keys (the list itself could be 100 KB).

    The count and the NUL-joined keys identify the list whenever its keys are valid (no
    key holds a NUL), which every cached answer's keys were.
    """
    joined = "\x00".join(keys).encode("utf-8", "surrogatepass")
    return (len(keys), hashlib.blake2b(joined, digest_size=16).digest())


def _cost(answer: Any) -> int:
    size = len(answer) if isinstance(answer, bytes) else answer.ByteSize()
    return size + _ENTRY_OVERHEAD_BYTES


class _AnswerCache:
    """Encoded answers per tenant (None for no tenant), dropped per tenant or all at once.

    Bounded in bytes (``max_bytes`` in all, a sixteenth of it per tenant) and in entries
    per tenant; an answer over MAX_CACHED_ANSWER_BYTES is never kept.
    """

    def __init__(self, max_bytes: int = ANSWER_CACHE_BYTES) -> None:
        self.by_tenant: dict[str | None, dict[CacheKey, Any]] = {}
        self.bytes_by_tenant: dict[str | None, int] = {}
        self.max_bytes = max_bytes
        self.max_tenant_bytes = max(max_bytes // 16, MAX_CACHED_ANSWER_BYTES)
        self.size = 0  # entries
        self.bytes = 0

    def get(self, tenant: str | None, key: CacheKey) -> Any:
        answers = self.by_tenant.get(tenant)
        return None if answers is None else answers.get(key)

    def put(self, tenant: str | None, key: CacheKey, answer: Any) -> None:
        cost = _cost(answer)
        if cost > MAX_CACHED_ANSWER_BYTES or self.max_bytes <= 0:
            return
        if self.bytes + cost > self.max_bytes:
            self._clear()
        answers = self.by_tenant.get(tenant)
        if answers is None:
            answers = self.by_tenant[tenant] = {}
        elif (
            len(answers) >= MAX_ANSWERS_PER_TENANT
            or self.bytes_by_tenant.get(tenant, 0) + cost > self.max_tenant_bytes
        ):
            self._drop_tenant(tenant)
            answers = self.by_tenant[tenant] = {}
        previous = answers.get(key)
        if previous is not None:
            self._account(tenant, -1, -_cost(previous))
        answers[key] = answer
        self._account(tenant, 1, cost)

    def _account(self, tenant: str | None, entries: int, cost: int) -> None:
        self.size += entries
        self.bytes += cost
        self.bytes_by_tenant[tenant] = self.bytes_by_tenant.get(tenant, 0) + cost

    def _drop_tenant(self, tenant: str | None) -> None:
        dropped = self.by_tenant.pop(tenant, None)
        if dropped is not None:
            self.size -= len(dropped)
            self.bytes -= self.bytes_by_tenant.pop(tenant, 0)

    def _clear(self) -> None:
        self.by_tenant.clear()
        self.bytes_by_tenant.clear()
        self.size = 0
        self.bytes = 0

    def drop(self, change: rm.Change) -> None:
        if change.everyone or change.nodes:
            # A node's answers are cached under every tenant that asked with that node.
            self._clear()
            return
        for tenant in change.tenants:
            self._drop_tenant(tenant)


class ReadModel:
    def __init__(
        self,
        db: Database,
        feed: ChangeFeed,
        stale_after_s: float = STALE_AFTER_S,
        answer_cache_bytes: int = ANSWER_CACHE_BYTES,
    ) -> None:
        self.db, self.feed, self.stale_after_s = db, feed, stale_after_s
        self.state = rm.ReadState()
        self.seq = -1  # every change up to this seq is reflected
        self._advanced = asyncio.Event()  # set (and replaced) each time seq moves
        # Bumped by every state applied (feed event, local write, reload): answers derived
        # from the whole state (OFREP's bulk evaluation) are cached under it.
        self.generation = 0
        self.loaded = asyncio.Event()
        self.load_seconds: float | None = None
        self._loaded_at: float | None = None
        self._subscription: Subscription | None = None
        self._stopped = False
        # Set while the model follows the feed (the snapshot's gap is closed).
        self.attached = asyncio.Event()
        self._flag_answers = _AnswerCache(answer_cache_bytes)
        self._config_answers = _AnswerCache(answer_cache_bytes)
        self._defaults: bytes | None = None
        self._written_while_loading: list[rm.FlagState | rm.ConfigState] | None = None
        # The head of the snapshot the state was last loaded from, and why a reload is due
        # (an event that failed to apply, or a row of ours the stream could not decode).
        self._load_head = -1
        self._reload_reason: str | None = None
        stream.undecodable_listeners.append(self._on_undecodable)

    # --- loading and following the stream ----------------------------------------------

    async def load(self) -> None:
        """Replaces the state with a fresh snapshot (raises a DomainError if unreachable)."""
        started = time.perf_counter()
        wall = time.time()
        # Writes this process applies while the snapshot loads may be newer than it: they
        # are applied again (version-guarded) to the new state, keeping read-your-writes.
        self._written_while_loading = []
        try:
            loaded = await load_all(self.db)
        finally:
            written, self._written_while_loading = self._written_while_loading, None
        state = rm.ReadState()
        for flag in loaded.flags:
            state.apply_flag(flag)
        for config in loaded.configs:
            state.apply_config(config)
        for item in written or ():
            if isinstance(item, rm.FlagState):
                state.apply_flag(item)
            else:
                state.apply_config(item)
        self.state = state
        self.seq = loaded.head_seq
        self.generation += 1
        self._seq_moved()
        self._load_head = loaded.head_seq
        self._reload_reason = None
        self._flag_answers.drop(rm.EVERYONE)
        self._config_answers.drop(rm.EVERYONE)
        self._defaults = None
        self._loaded_at = wall
        self.load_seconds = time.perf_counter() - started
        self.loaded.set()
        log.info(
            "read model loaded %d flags and %d configs at seq %d in %.0f ms",
            len(state.flags),
            len(state.configs),
            self.seq,
            self.load_seconds * 1000,
        )

    async def try_load(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self.load()
            return True
        except Exception as exc:
            log.warning("read model not loaded yet (retrying in the background): %s", exc)
            return False

    async def run(self) -> None:
        """Background job: load (with back-off) until loaded, then follow the change feed."""
        delay = _RETRY_START_S
        while not self._stopped:
            try:
                if not self.loaded.is_set():
                    await self.load()
                await self._follow()
                delay = _RETRY_START_S
            except Exception as exc:
                log.warning("read model catch-up failed (retry in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _follow(self) -> None:
        """Applies the feed's events after ``seq``; reloads when the stream expired, when an
        event failed to apply, or when a row of ours could not be decoded."""
        self._subscription = subscription = self.feed.subscribe(
            self.seq, subjects=_SUBJECTS, queue_limit=None
        )
        try:
            async for item in subscription:
                if isinstance(item, ChangeEvent):
                    self._apply_event(item)
                if self._reload_reason is not None:
                    # A change was not applied: the state may be wrong from here on, and
                    # only a snapshot can say how. It keeps answering meanwhile.
                    log.error("read model reloads from a snapshot: %s", self._reload_reason)
                    self.attached.clear()
                    await self._reload()
                    return  # run() follows again from the new head
                if isinstance(item, Live):
                    self.attached.set()
                elif isinstance(item, Expired):
                    # Events after seq are gone (pruned unread): a snapshot replaces guesses,
                    # while the model keeps answering from the state it has.
                    log.warning("read model reloads from a snapshot: %s", item.error.message)
                    self.attached.clear()
                    await self._reload()
            if self._reload_reason is not None and not self._stopped:
                # Asked for while the subscription waited (it was closed to get here).
                log.error("read model reloads from a snapshot: %s", self._reload_reason)
                self.attached.clear()
                await self._reload()
        finally:
            self.attached.clear()
            self._subscription = None

    async def _reload(self) -> None:
        delay = _RETRY_START_S
        while not self._stopped:
            try:
                await self.load()
                return
            except Exception as exc:
                log.warning("read model reload failed (retry in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    def _apply_event(self, event: ChangeEvent) -> None:
        if event.seq <= self.seq:
            return
        try:
            self.apply(event.change)
        except Exception as exc:
            log.exception("read model could not apply the event at seq %d", event.seq)
            self._want_reload(f"the event at seq {event.seq} failed to apply ({exc!r})")
        self.seq = event.seq
        self._seq_moved()

    def _seq_moved(self) -> None:
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    async def wait_for(self, seq: int, timeout: float) -> bool:
        """True once every change up to ``seq`` is reflected; False after ``timeout``.

        For consumers of their own subscription to the feed (OpenFeature streams) that
        read the model after an event: the model's subscription may not have applied it yet.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.seq < seq:
                    await self._advanced.wait()
        return self.seq >= seq

    def _on_undecodable(self, db: Database, subject: str, seq: int) -> None:
        """A row of this database the stream skipped: reload if it may be one we missed."""
        if db is self.db and subject in _SUBJECTS and seq > self._load_head:
            self._want_reload(f"the outbox row at seq {seq} ({subject}) does not decode")

    def _want_reload(self, reason: str) -> None:
        if self._reload_reason is None:
            self._reload_reason = reason
        subscription = self._subscription
        if subscription is not None:
            # Ends the iteration (it may be waiting for the next event), then _follow reloads.
            subscription.close()

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(ValueError):
            stream.undecodable_listeners.remove(self._on_undecodable)
        if self._subscription is not None:
            self._subscription.close()

    # --- writes of this process (read-your-writes) -------------------------------------

    def apply(self, change: events.Change) -> None:
        """Takes a flag's or config's new state (an event of the feed, or a local write)."""
        self.generation += 1
        if isinstance(change, FlagChanged):
            self._apply_flag(rm.FlagState.from_event(change))
        elif isinstance(change, ConfigChanged):
            self._apply_config(rm.ConfigState.from_event(change))

    def _apply_flag(self, state: rm.FlagState) -> None:
        if self._written_while_loading is not None:
            self._written_while_loading.append(state)
        change = self.state.apply_flag(state)
        if change.everyone:
            self._defaults = None
        if change is not rm.NOTHING:
            self._flag_answers.drop(change)

    def _apply_config(self, state: rm.ConfigState) -> None:
        if self._written_while_loading is not None:
            self._written_while_loading.append(state)
        change = self.state.apply_config(state)
        if change is not rm.NOTHING:
            self._config_answers.drop(change)

    # --- freshness ----------------------------------------------------------------------

    @property
    def current_at(self) -> float | None:
        """Wall-clock time at which the model last held every change (None before loading)."""
        if self._loaded_at is None:
            return None
        subscription = self._subscription
        if subscription is None or not subscription.attached or subscription.queue:
            return self._loaded_at
        caught_up = self.feed.caught_up_at
        return max(self._loaded_at, caught_up) if caught_up is not None else self._loaded_at

    def age(self) -> float | None:
        at = self.current_at
        return None if at is None else max(0.0, time.time() - at)

    @property
    def stale(self) -> bool:
        age = self.age()
        return age is None or age > self.stale_after_s

    def _require_loaded(self) -> None:
        if not self.loaded.is_set():
            raise Unavailable(
                "flags and configs are not loaded yet (the database is unreachable); retry",
                reason="READ_MODEL_NOT_LOADED",
            )

    # --- answers ------------------------------------------------------------------------

    def evaluate_flag(self, key: str, tenant_id: str) -> flag_pb2.EvaluateFlagResponse:
        self._require_loaded()
        flag = self.state.flags.get(key)
        if flag is None:
            raise NotFound(f"flag {key} does not exist")
        return _EVALUATE_RESPONSES[flag.evaluate(tenant_id)]

    def flag(self, key: str) -> rm.FlagState | None:
        """The flag's current state (None if it does not exist), for other protocols' answers."""
        self._require_loaded()
        return self.state.flags.get(key)

    def live_flags(self) -> list[rm.FlagState]:
        """Every unarchived flag, ordered by key."""
        self._require_loaded()
        return self.state.live_flags()

    def resolve_value(
        self, spec: ConfigKeySpec, tenant_id: str | None, node_id: str | None
    ) -> tuple[ConfigValue, Scope | None]:
        """The effective value and its source scope (None: the key's default), unencoded."""
        self._require_loaded()
        return self.state.resolve(spec, tenant_id, node_id)

    def evaluate_flags(self, tenant_id: str, keys: Sequence[str]) -> bytes:
        """Encoded EvaluateFlagsResponse: ``keys`` (request order), or every live flag."""
        self._require_loaded()
        cache_key = keys_digest(keys)
        cached: bytes | None = self._flag_answers.get(tenant_id, cache_key)
        if cached is None:
            if keys:
                cached, complete = self._evaluate_keys(tenant_id, keys)
            else:
                cached, complete = self._tenant_overrides(tenant_id), True
            # An answer naming missing keys is not kept: anyone can ask for any number of
            # made-up keys, and a cache full of those would pin memory and evict real ones.
            if complete:
                self._flag_answers.put(tenant_id, cache_key, cached)
        if keys:
            return cached
        return self._defaults_encoded() + cached

    def known_answer(self, tenant_id: str, keys: Sequence[str]) -> bytes | None:
        """The cached answer to exactly this (already validated once) question, if any.

        Lets the servicer skip re-validating a repeated request's keys (50 keys cost more
        to check than to answer); a miss goes the full way through :meth:`evaluate_flags`.
        """
        cached: bytes | None = self._flag_answers.get(tenant_id, keys_digest(keys))
        if cached is None or keys:
            return cached
        return self._defaults_encoded() + cached

    def _evaluate_keys(self, tenant_id: str, keys: Sequence[str]) -> tuple[bytes, bool]:
        """The encoded answer, and whether every key was found."""
        response = flag_pb2.EvaluateFlagsResponse()
        flags = self.state.flags
        evaluations = response.evaluations
        for key in dict.fromkeys(keys):  # request order, each key once
            flag = flags.get(key)
            if flag is None:
                response.missing_keys.append(key)
            else:
                evaluations[key].CopyFrom(_EVALUATIONS[flag.evaluate(tenant_id)])
        return response.SerializeToString(), not response.missing_keys

    def _tenant_overrides(self, tenant_id: str) -> bytes:
        """The entries where the tenant's answer differs from the default, encoded."""
        response = flag_pb2.EvaluateFlagsResponse()
        for flag in self.state.tenant_overrides(tenant_id):
            if not flag.archived:
                response.evaluations[flag.key].CopyFrom(_EVALUATIONS[flag.evaluate(tenant_id)])
        return response.SerializeToString()

    def _defaults_encoded(self) -> bytes:
        if self._defaults is not None:
            return self._defaults
        response = flag_pb2.EvaluateFlagsResponse()
        for flag in self.state.live_flags():
            response.evaluations[flag.key].CopyFrom(_EVALUATIONS[flag.default_evaluation()])
        encoded = response.SerializeToString(deterministic=True)
        self._defaults = encoded
        return encoded

    def resolve_config(
        self, spec: ConfigKeySpec, tenant_id: str | None, node_id: str | None
    ) -> config_pb2.ResolveConfigResponse:
        self._require_loaded()
        cache_key = (spec.key, node_id)
        cached: config_pb2.ResolveConfigResponse | None = self._config_answers.get(
            tenant_id, cache_key
        )
        if cached is None:
            value, scope = self.state.resolve(spec, tenant_id, node_id)
            cached = config_pb2.ResolveConfigResponse(
                value=value_to_proto(value),
                source_scope=source_scope_to_proto(scope),
            )
            self._config_answers.put(tenant_id, cache_key, cached)
        return cached

    def resolve_configs(
        self, specs: Sequence[ConfigKeySpec], tenant_id: str | None, node_id: str | None
    ) -> bytes:
        """Encoded ResolveConfigsResponse, one entry per spec in the given order."""
        self._require_loaded()
        cache_key = (tuple(s.key for s in specs), node_id, "all")
        cached: bytes | None = self._config_answers.get(tenant_id, cache_key)
        if cached is None:
            response = config_pb2.ResolveConfigsResponse()
            for spec in specs:
                value, scope = self.state.resolve(spec, tenant_id, node_id)
                response.configs.add(
                    key=spec.key,
                    value=value_to_proto(value),
                    source_scope=source_scope_to_proto(scope),
                )
            cached = response.SerializeToString()
            self._config_answers.put(tenant_id, cache_key, cached)
        return cached


_SUBJECTS = (events.FLAG_CHANGED, events.CONFIG_CHANGED)
