"""Who may call what: the one table from each RPC to the roles allowed to call it.

Deny by default: a method missing from :data:`POLICY` is refused for every role, and a
test walks every method of every service in the descriptors so a new RPC cannot ship
without a line here. The table only answers "may this role call this RPC at all"; which
rows a caller may see or touch (a tenant admin's own tenant, a service's own heartbeat)
is decided by the servicers, which read the principal from server/security/principal.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from server.security.principal import PLATFORM_ADMIN, PLATFORM_READER, SERVICE, TENANT_ADMIN

_CONFIG = "/platform_admin.v1.ConfigService/"
_FLAG = "/platform_admin.v1.FlagService/"
_HEALTH = "/platform_admin.v1.HealthService/"
_FLAGD_V1 = "/flagd.evaluation.v1.Service/"
_FLAGD_V2 = "/flagd.evaluation.v2.Service/"
_FLAGD_SYNC = "/flagd.sync.v1.FlagSyncService/"

_ADMIN = frozenset({PLATFORM_ADMIN})
_READ = frozenset({PLATFORM_ADMIN, PLATFORM_READER})
_READ_TENANT = _READ | {TENANT_ADMIN}
_READ_SERVICE_TENANT = _READ | {SERVICE, TENANT_ADMIN}
_WRITE_TENANT = _ADMIN | {TENANT_ADMIN}
_REPORT = _ADMIN | {SERVICE}

POLICY: Mapping[str, frozenset[str]] = {
    # ConfigService. Tenant admins see and set only TENANT-scope rows of their own tenant
    # (enforced in server/rpc/config_service.py); the allow-list itself is public knowledge.
    _CONFIG + "ListConfigKeys": _READ_TENANT,
    _CONFIG + "GetConfig": _READ_TENANT,
    _CONFIG + "ListConfigs": _READ_TENANT,
    _CONFIG + "ListConfigHistory": _READ_TENANT,
    _CONFIG + "SetConfig": _WRITE_TENANT,
    _CONFIG + "ArchiveConfig": _WRITE_TENANT,
    _CONFIG + "UnarchiveConfig": _WRITE_TENANT,
    _CONFIG + "ResolveConfig": _READ_SERVICE_TENANT,
    _CONFIG + "ResolveConfigs": _READ_SERVICE_TENANT,
    _CONFIG + "WatchConfigs": _READ_SERVICE_TENANT,
    # FlagService. A flag definition lists other tenants' ids, so tenant admins never read
    # definitions; they only evaluate, for their own tenant.
    _FLAG + "CreateFlag": _ADMIN,
    _FLAG + "GetFlag": _READ,
    _FLAG + "ListFlags": _READ,
    _FLAG + "UpdateFlag": _ADMIN,
    _FLAG + "SetTenantOverride": _ADMIN,
    _FLAG + "ArchiveFlag": _ADMIN,
    _FLAG + "UnarchiveFlag": _ADMIN,
    _FLAG + "EvaluateFlag": _READ_SERVICE_TENANT,
    _FLAG + "EvaluateFlags": _READ_SERVICE_TENANT,
    _FLAG + "WatchFlags": _READ | {SERVICE},
    # HealthService. A service reports only for its own service_id (enforced in the servicer).
    _HEALTH + "CreateHealthSource": _ADMIN,
    _HEALTH + "GetHealthSource": _READ,
    _HEALTH + "ListHealthSources": _READ,
    _HEALTH + "UpdateHealthSource": _ADMIN,
    _HEALTH + "DeleteHealthSource": _ADMIN,
    _HEALTH + "ReportHeartbeat": _REPORT,
    _HEALTH + "RecordCheckResult": _REPORT,
    _HEALTH + "ListCheckResults": _READ,
    _HEALTH + "GetPlatformHealth": _READ,
    # flagd evaluation (server/openfeature/): evaluations like EvaluateFlag / ResolveConfig,
    # a tenant admin only for its own tenant (the context's tenant is checked there).
    # EventStream names only keys that changed, which evaluators know anyway.
    **{
        prefix + rpc: _READ_SERVICE_TENANT
        for prefix in (_FLAGD_V1, _FLAGD_V2)
        for rpc in (
            "ResolveBoolean",
            "ResolveString",
            "ResolveFloat",
            "ResolveInt",
            "ResolveObject",
            "EventStream",
        )
    },
    _FLAGD_V1 + "ResolveAll": _READ_SERVICE_TENANT,
    # flagd sync: the whole flag set names every tenant of every list, so, like
    # WatchFlags, never for tenant admins.
    _FLAGD_SYNC + "SyncFlags": _READ | {SERVICE},
    _FLAGD_SYNC + "FetchAllFlags": _READ | {SERVICE},
    _FLAGD_SYNC + "GetMetadata": _READ | {SERVICE},
    # OFREP over HTTP (server/openfeature/ofrep.py): the same evaluations as flagd's.
    "/ofrep.v1.OFREP/EvaluateFlag": _READ_SERVICE_TENANT,
    "/ofrep.v1.OFREP/EvaluateFlagsBulk": _READ_SERVICE_TENANT,
}


def allowed_roles(method: str) -> frozenset[str]:
    """The roles that may call ``method`` (a full name, "/pkg.Service/Rpc"); empty if unknown."""
    return POLICY.get(method, frozenset())


def is_allowed(method: str, roles: Iterable[str]) -> bool:
    allowed = allowed_roles(method)
    return any(role in allowed for role in roles)
