"""platform_admin.v1.FlagService: thin servicer over storage/flags.py.

Each method validates the request (domain/flags.py), calls storage, converts the result.
WatchFlags is served by a pluggable ``watch`` object (server/rpc/watch.py) so the change
stream can evolve without touching this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import grpc
from platform_admin.v1 import flag_pb2, flag_pb2_grpc

from domain import flags as rules
from domain import paging
from domain.errors import Collector, InvalidArgument, PermissionDenied
from domain.etags import parse_etag
from domain.events import FlagChanged
from domain.flags import Override
from domain.ids import check_ulid
from server.rpc.convert import REASON_TO_PROTO, evaluation_to_proto, flag_to_proto
from server.rpc.encoded import decoded, decoded_stream, encoded
from server.rpc.read_your_writes import ReadYourWrites
from server.rpc.watch import served_by
from server.security import principal as principal_ctx
from storage import flags

OVERRIDE_FROM_PROTO = {
    flag_pb2.TENANT_OVERRIDE_ENABLED: Override.ENABLED,
    flag_pb2.TENANT_OVERRIDE_DISABLED: Override.DISABLED,
    flag_pb2.TENANT_OVERRIDE_INHERIT: Override.INHERIT,
}

_OVERRIDES = "TENANT_OVERRIDE_ENABLED, TENANT_OVERRIDE_DISABLED or TENANT_OVERRIDE_INHERIT"


class FlagWatch(Protocol):
    """What serves WatchFlags: the same signature as the servicer method."""

    def WatchFlags(
        self, request: flag_pb2.WatchFlagsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[flag_pb2.WatchFlagsResponse | bytes]: ...


def _evaluation_tenant(tenant_id: str) -> str:
    if not tenant_id:
        raise InvalidArgument.field("tenant_id", "is required")
    tenant = check_ulid("tenant_id", tenant_id)
    who = principal_ctx.current()
    if who.is_tenant_scoped and tenant != who.tenant_id:
        raise PermissionDenied("tenant admins may evaluate flags for their own tenant only")
    return tenant


class FlagServicer(ReadYourWrites[FlagWatch], flag_pb2_grpc.FlagServiceServicer):
    async def CreateFlag(
        self, request: flag_pb2.CreateFlagRequest, context: grpc.aio.ServicerContext
    ) -> flag_pb2.CreateFlagResponse:
        errors = Collector()
        key = errors.check(rules.check_key, "key", request.key, "")
        description = errors.check(rules.check_description, "description", request.description, "")
        errors.raise_if_any()
        row = self._wrote(
            await flags.create(self.db, key, description, request.default_enabled, self._actor())
        )
        return flag_pb2.CreateFlagResponse(flag=flag_to_proto(row))

    async def GetFlag(
        self, request: flag_pb2.GetFlagRequest, context: grpc.aio.ServicerContext
    ) -> flag_pb2.GetFlagResponse:
        row = await flags.get(self.db, rules.check_key("key", request.key))
        return flag_pb2.GetFlagResponse(flag=flag_to_proto(row.event()))

    async def ListFlags(
        self, request: flag_pb2.ListFlagsRequest, context: grpc.aio.ServicerContext
    ) -> flag_pb2.ListFlagsResponse:
        limit = paging.page_size(request.page_size)
        filters = [request.show_archived]
        position = paging.decode(request.page_token, "flags", filters, 1)
        after_key = None
        if position is not None:
            try:
                after_key = rules.check_key("page_token", str(position[0]))
            except InvalidArgument:
                raise InvalidArgument.field(
                    "page_token", "is not a token issued for this request"
                ) from None
        rows = await flags.list_rows(
            self.db, show_archived=request.show_archived, after_key=after_key, limit=limit + 1
        )
        return flag_pb2.ListFlagsResponse(
            flags=[flag_to_proto(r.event()) for r in rows[:limit]],
            next_page_token=paging.next_token(rows, limit, "flags", filters, lambda r: [r.key]),
        )

    async def UpdateFlag(
        self, request: flag_pb2.UpdateFlagRequest, context: grpc.aio.ServicerContext
    ) -> flag_pb2.UpdateFlagResponse:
        errors = Collector()
        key = errors.check(rules.check_key, "key", request.key, "")
        paths = request.update_mask.paths
        mask = errors.check(rules.check_update_mask, "update_mask", paths, frozenset[str]())
        description = None
        if "description" in mask:
            description = errors.check(
                rules.check_description, "description", request.description, ""
            )
        expected = errors.check(parse_etag, "etag", request.etag, None)
        errors.raise_if_any()
        row = await flags.update(
            self.db,
            key,
            description=description,
            default_enabled=request.default_enabled if "default_enabled" in mask else None,
            expected_version=expected,
            actor=self._actor(),
        )
        self._wrote(row)
        return flag_pb2.UpdateFlagResponse(flag=flag_to_proto(row))

    async def SetTenantOverride(
        self, request: flag_pb2.SetTenantOverrideRequest, context: grpc.aio.ServicerContext
    ) -> flag_pb2.SetTenantOverrideResponse:
        errors = Collector()
        key = errors.check(rules.check_key, "key", request.key, "")
        tenant = ""
        if not request.tenant_id:
            errors.add("tenant_id", "is required")
        else:
            tenant = errors.check(check_ulid, "tenant_id", request.tenant_id, "")
        override = OVERRIDE_FROM_PROTO.get(request.override)
        if request.override == flag_pb2.TENANT_OVERRIDE_UNSPECIFIED:
            errors.add("override", f"is required ({_OVERRIDES})")
        elif override is None:
            errors.add("override", f"unknown value {request.override} ({_OVERRIDES})")
        expected = errors.check(parse_etag, "etag", request.etag, None)
        errors.raise_if_any()
        assert override is not None
        row = self._wrote(
            await flags.set_override(self.db, key, tenant, override, expected, self._actor())
        )
        return flag_pb2.SetTenantOverrideResponse(flag=flag_to_proto(row))

    async def _set_archived(self, key: str, etag: str, archived: bool) -> FlagChanged:
        errors = Collector()
        checked_key = errors.check(rules.check_key, "key", key, "")
        expected = errors.check(parse_etag, "etag", etag, None)
        errors.raise_if_any()
        return self._wrote(
            await flags.set_archived(self.db, checked_key, archived, expected, self._actor())
        )

    async def ArchiveFlag(
        self, request: flag_pb2.ArchiveFlagRequest, context: grpc.aio.ServicerContext
    ) -> flag_pb2.ArchiveFlagResponse:
        row = await self._set_archived(request.key, request.etag, True)
        return flag_pb2.ArchiveFlagResponse(flag=flag_to_proto(row))

    async def UnarchiveFlag(
        self, request: flag_pb2.UnarchiveFlagRequest, context: grpc.aio.ServicerContext
    ) -> flag_pb2.UnarchiveFlagResponse:
        row = await self._set_archived(request.key, request.etag, False)
        return flag_pb2.UnarchiveFlagResponse(flag=flag_to_proto(row))

    async def EvaluateFlag(
        self, request: flag_pb2.EvaluateFlagRequest, context: grpc.aio.ServicerContext
    ) -> flag_pb2.EvaluateFlagResponse:
        key = rules.check_key("key", request.key)
        tenant = _evaluation_tenant(request.tenant_id)
        if self.read_model is not None:
            return self.read_model.evaluate_flag(key, tenant)
        evaluation = (await flags.get(self.db, key)).evaluate(tenant)
        return flag_pb2.EvaluateFlagResponse(
            enabled=evaluation.enabled, reason=REASON_TO_PROTO[evaluation.reason]
        )

    EvaluateFlags = decoded("EvaluateFlags", flag_pb2.EvaluateFlagsResponse)

    @encoded
    async def EvaluateFlagsEncoded(
        self, request: flag_pb2.EvaluateFlagsRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        # The limit first, before anything walks the keys (a 4 MiB request holds ~1.4 M).
        if len(request.keys) > rules.MAX_EVALUATE_KEYS:
            raise InvalidArgument.field("keys", f"at most {rules.MAX_EVALUATE_KEYS} keys per call")
        if self.read_model is not None:
            # The same question answered before was valid then: only the caller is checked.
            known = self.read_model.known_answer(request.tenant_id, request.keys)
            if known is not None:
                _evaluation_tenant(request.tenant_id)
                return known
        keys = [rules.check_key(f"keys[{i}]", k) for i, k in enumerate(request.keys)]
        tenant = _evaluation_tenant(request.tenant_id)
        if self.read_model is not None:
            return self.read_model.evaluate_flags(tenant, keys)
        response = flag_pb2.EvaluateFlagsResponse()
        if not keys:
            for live in await flags.live(self.db):
                response.evaluations[live.key].CopyFrom(evaluation_to_proto(live.evaluate(tenant)))
            return response.SerializeToString()
        found = await flags.get_many(self.db, keys)
        for key in dict.fromkeys(keys):  # request order, each key once
            row = found.get(key)
            if row is None:
                response.missing_keys.append(key)
            else:
                response.evaluations[key].CopyFrom(evaluation_to_proto(row.evaluate(tenant)))
        return response.SerializeToString()

    @encoded
    def WatchFlagsEncoded(
        self, request: flag_pb2.WatchFlagsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[flag_pb2.WatchFlagsResponse | bytes]:
        """The stream as served: change messages come encoded (server/rpc/watch.py)."""
        handler = None if self.watch is None else self.watch.WatchFlags
        return served_by(handler, "WatchFlags", request, context)

    WatchFlags = decoded_stream("WatchFlags", flag_pb2.WatchFlagsResponse)
