"""platform_admin.v1.ConfigService: thin servicer over storage/configs.py.

Each method validates the request (domain rules), calls storage, converts the result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Protocol

import grpc
from platform_admin.v1 import config_pb2, config_pb2_grpc

from domain import config_keys, paging
from domain.config_keys import ConfigTarget, Scope
from domain.errors import InvalidArgument, NotFound, PermissionDenied
from domain.etags import parse_etag
from domain.ids import CONFIG_HISTORY, check_ulid, with_prefix
from domain.resolution import resolve
from server.rpc.convert import (
    SCOPE_TO_PROTO,
    VALUE_TYPE_TO_PROTO,
    config_to_proto,
    scope_from_proto,
    source_scope_to_proto,
    timestamp,
    value_from_proto,
    value_to_proto,
)
from server.rpc.encoded import decoded, decoded_stream, encoded
from server.rpc.read_your_writes import ReadYourWrites
from server.rpc.watch import served_by
from server.security import principal as principal_ctx
from storage import configs
from storage.configs import HistoryRow

MAX_RESOLVE_KEYS = 1000


def _history_to_proto(row: HistoryRow) -> config_pb2.ConfigHistoryEntry:
    entry = config_pb2.ConfigHistoryEntry(
        id=with_prefix(CONFIG_HISTORY, row.id),
        new_value=value_to_proto(config_keys.deserialize(row.new_value)),
        changed_by=row.changed_by or "",
        change_time=timestamp(row.changed_at),
        action=getattr(config_pb2, f"CONFIG_CHANGE_ACTION_{row.action}"),
    )
    if row.old_value is not None:
        entry.old_value.CopyFrom(value_to_proto(config_keys.deserialize(row.old_value)))
    return entry


def _key_to_proto(spec: config_keys.ConfigKeySpec) -> config_pb2.ConfigKey:
    return config_pb2.ConfigKey(
        key=spec.key,
        value_type=VALUE_TYPE_TO_PROTO[spec.value_type],
        allowed_scopes=[SCOPE_TO_PROTO[s] for s in spec.scopes],
        default_value=value_to_proto(spec.default),
        min_value=spec.min_value,
        max_value=spec.max_value,
        max_length=spec.max_length,
        string_format=spec.string_format,
        description=spec.description,
    )


_KEYS_RESPONSE = config_pb2.ListConfigKeysResponse(
    keys=[_key_to_proto(spec) for _, spec in sorted(config_keys.ALLOW_LIST.items())]
)


def _target(
    request: config_pb2.GetConfigRequest
    | config_pb2.SetConfigRequest
    | config_pb2.ArchiveConfigRequest
    | config_pb2.UnarchiveConfigRequest
    | config_pb2.ListConfigHistoryRequest,
    *,
    for_write: bool,
) -> tuple[config_keys.ConfigKeySpec, ConfigTarget]:
    scope = scope_from_proto("scope", request.scope, required=False)
    spec, target = config_keys.check_target(
        request.key, scope, request.tenant_id, request.node_id, for_write=for_write
    )
    _guard_tenant(target, for_write=for_write)
    return spec, target


def _guard_tenant(target: ConfigTarget, *, for_write: bool) -> None:
    """A tenant admin addresses only its own TENANT-scope rows; others do not exist for it."""
    who = principal_ctx.current()
    if not who.is_tenant_scoped:
        return
    if target.scope is not Scope.TENANT:
        if for_write:
            raise PermissionDenied("tenant admins may set TENANT-scope configs only")
        raise NotFound(f"config {target.key} at {target.scope.value} scope is not set")
    if target.tenant_id != who.tenant_id:
        raise NotFound(
            f"config {target.key} at TENANT scope for tenant {target.tenant_id} is not set"
        )


def _optional_ulid(field: str, value: str) -> str | None:
    return check_ulid(field, value) if value else None


class ConfigWatch(Protocol):
    """What serves WatchConfigs: the same signature as the servicer method."""

    def WatchConfigs(
        self, request: config_pb2.WatchConfigsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[config_pb2.WatchConfigsResponse | bytes]: ...


class ConfigServicer(ReadYourWrites[ConfigWatch], config_pb2_grpc.ConfigServiceServicer):
    async def ListConfigKeys(
        self, request: config_pb2.ListConfigKeysRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ListConfigKeysResponse:
        return _KEYS_RESPONSE

    async def GetConfig(
        self, request: config_pb2.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.GetConfigResponse:
        _, target = _target(request, for_write=False)
        row = await configs.get(self.db, target)
        return config_pb2.GetConfigResponse(config=config_to_proto(row.event()))

    async def ListConfigs(
        self, request: config_pb2.ListConfigsRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ListConfigsResponse:
        limit = paging.page_size(request.page_size)
        scope = scope_from_proto("scope", request.scope, required=False)
        tenant_id = _optional_ulid("tenant_id", request.tenant_id)
        node_id = config_keys.check_node_id("node_id", request.node_id) if request.node_id else None
        who = principal_ctx.current()
        if who.is_tenant_scoped:
            # Other tenants' rows are invisible: the filter is forced, never widened.
            if (scope not in (None, Scope.TENANT)) or (tenant_id not in (None, who.tenant_id)):
                return config_pb2.ListConfigsResponse()
            scope, tenant_id = Scope.TENANT, who.tenant_id
        filters = [scope, tenant_id, node_id, request.show_archived]
        position = paging.decode(request.page_token, "configs", filters, 4)
        after = (
            (str(position[0]), str(position[1]), str(position[2]), str(position[3]))
            if position
            else None
        )
        rows = await configs.list_rows(
            self.db,
            scope=scope,
            tenant_id=tenant_id,
            node_id=node_id,
            show_archived=request.show_archived,
            after=after,
            limit=limit + 1,
        )
        return config_pb2.ListConfigsResponse(
            configs=[config_to_proto(r.event()) for r in rows[:limit]],
            next_page_token=paging.next_token(
                rows,
                limit,
                "configs",
                filters,
                lambda r: [r.key, r.scope, r.tenant_id or "", r.node_id or ""],
            ),
        )

    async def SetConfig(
        self, request: config_pb2.SetConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.SetConfigResponse:
        spec, target = _target(request, for_write=True)
        value = spec.check_value(
            "value", value_from_proto(request.value) if request.HasField("value") else None
        )
        description = config_keys.check_description("description", request.description)
        expected = parse_etag("etag", request.etag)
        row = self._wrote(
            await configs.set_value(self.db, target, value, description, expected, self._actor())
        )
        return config_pb2.SetConfigResponse(config=config_to_proto(row))

    async def _set_archived(
        self,
        request: config_pb2.ArchiveConfigRequest | config_pb2.UnarchiveConfigRequest,
        archived: bool,
    ) -> config_pb2.Config:
        _, target = _target(request, for_write=True)
        expected = parse_etag("etag", request.etag)
        changed = await configs.set_archived(self.db, target, archived, expected, self._actor())
        return config_to_proto(self._wrote(changed))

    async def ArchiveConfig(
        self, request: config_pb2.ArchiveConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ArchiveConfigResponse:
        return config_pb2.ArchiveConfigResponse(config=await self._set_archived(request, True))

    async def UnarchiveConfig(
        self, request: config_pb2.UnarchiveConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.UnarchiveConfigResponse:
        return config_pb2.UnarchiveConfigResponse(config=await self._set_archived(request, False))

    def _resolve_scope(
        self, tenant_field: str, tenant_id: str, node_id: str
    ) -> tuple[str | None, str | None]:
        tenant = _optional_ulid(tenant_field, tenant_id)
        node = config_keys.check_node_id("node_id", node_id) if node_id else None
        who = principal_ctx.current()
        if who.is_tenant_scoped and tenant != who.tenant_id:
            raise PermissionDenied("tenant admins may resolve for their own tenant only")
        if who.is_tenant_scoped and node is not None:
            # NODE rows are platform settings that Get/List/Watch hide from tenant admins;
            # refusing (rather than ignoring node_id) tells the caller its answer would
            # not be the node's.
            raise PermissionDenied(
                "tenant admins may not resolve for a node_id: NODE-scope values are"
                " platform settings",
                reason="NODE_SCOPE_NOT_ALLOWED",
            )
        return tenant, node

    async def ResolveConfig(
        self, request: config_pb2.ResolveConfigRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ResolveConfigResponse:
        spec = config_keys.spec_for("key", request.key)
        tenant, node = self._resolve_scope("tenant_id", request.tenant_id, request.node_id)
        if self.read_model is not None:
            return self.read_model.resolve_config(spec, tenant, node)
        live = await configs.live_values_for(self.db, [spec.key], tenant, node)
        value, scope = resolve(spec, live.get(spec.key, {}))
        return config_pb2.ResolveConfigResponse(
            value=value_to_proto(value),
            source_scope=source_scope_to_proto(scope),
        )

    ResolveConfigs = decoded("ResolveConfigs", config_pb2.ResolveConfigsResponse)

    @encoded
    async def ResolveConfigsEncoded(
        self, request: config_pb2.ResolveConfigsRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        if len(request.keys) > MAX_RESOLVE_KEYS:
            raise InvalidArgument.field("keys", f"at most {MAX_RESOLVE_KEYS} keys per call")
        keys = sorted(set(request.keys)) if request.keys else sorted(config_keys.ALLOW_LIST)
        specs = [config_keys.spec_for(f"keys[{i}]", k) for i, k in enumerate(keys)]
        tenant, node = self._resolve_scope("tenant_id", request.tenant_id, request.node_id)
        if self.read_model is not None:
            return self.read_model.resolve_configs(specs, tenant, node)
        live = await configs.live_values_for(self.db, keys, tenant, node)
        response = config_pb2.ResolveConfigsResponse()
        for spec in specs:
            value, scope = resolve(spec, live.get(spec.key, {}))
            response.configs.add(
                key=spec.key,
                value=value_to_proto(value),
                source_scope=source_scope_to_proto(scope),
            )
        return response.SerializeToString()

    async def ListConfigHistory(
        self, request: config_pb2.ListConfigHistoryRequest, context: grpc.aio.ServicerContext
    ) -> config_pb2.ListConfigHistoryResponse:
        limit = paging.page_size(request.page_size)
        _, target = _target(request, for_write=False)
        filters = [target.key, target.scope, target.tenant_id, target.node_id]
        position = paging.decode(request.page_token, "history", filters, 2)
        after = None
        if position:
            try:
                datetime.fromisoformat(str(position[0]))
                check_ulid("page_token", str(position[1]))
            except ValueError:
                raise InvalidArgument.field(
                    "page_token", "is not a token issued for this request"
                ) from None
            after = (str(position[0]), str(position[1]))
        rows = await configs.history(self.db, target, after, limit + 1)
        return config_pb2.ListConfigHistoryResponse(
            entries=[_history_to_proto(r) for r in rows[:limit]],
            next_page_token=paging.next_token(
                rows, limit, "history", filters, lambda r: [r.changed_at.isoformat(), r.id]
            ),
        )

    @encoded
    def WatchConfigsEncoded(
        self,
        request: config_pb2.WatchConfigsRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[config_pb2.WatchConfigsResponse | bytes]:
        """The stream as served (shared with WatchFlags: server/rpc/watch.py)."""
        handler = None if self.watch is None else self.watch.WatchConfigs
        return served_by(handler, "WatchConfigs", request, context)

    WatchConfigs = decoded_stream("WatchConfigs", config_pb2.WatchConfigsResponse)
