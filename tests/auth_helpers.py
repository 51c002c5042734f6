"""Tokens, principals and servers with authentication on, shared by the security tests."""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import flagd.evaluation.v1
import flagd.evaluation.v2
import flagd.sync.v1
import grpc
import jwt
import platform_admin.v1
import psycopg
import psycopg.sql
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from server.app import App
from server.security.auth import JwtAuthorizer, TokenVerifier, VerificationKey
from server.settings import Settings
from tests.helpers import TENANT_A, TENANT_B

SECRET = "test-secret-for-hs256-of-at-least-32-bytes"
AUDIENCE = "platform-admin"

ADMIN_SUB = "01JAD000000000000000000ADM"
READER_SUB = "01JAD000000000000000000REA"
SERVICE_SUB = "01JAD000000000000000000SVC"
TENANT_A_SUB = "01JAD000000000000000000TNA"
TENANT_B_SUB = "01JAD000000000000000000TNB"
SERVICE_ID = "billing"
OTHER_SERVICE_ID = "ledger"


@dataclass(frozen=True)
class Caller:
    """A principal as the matrix tests use it: a name, its claims."""

    name: str
    sub: str
    roles: tuple[str, ...]
    tenant_id: str | None = None
    service_id: str | None = None

    def claims(self, ttl_s: int = 600, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": self.sub,
            "roles": list(self.roles),
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + ttl_s,
        }
        if self.tenant_id:
            claims["tenant_id"] = self.tenant_id
        if self.service_id:
            claims["service_id"] = self.service_id
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}


ADMIN = Caller("platform_admin", ADMIN_SUB, ("platform_admin",))
READER = Caller("platform_reader", READER_SUB, ("platform_reader",))
SERVICE = Caller("service", SERVICE_SUB, ("service",), service_id=SERVICE_ID)
TENANT_ADMIN_A = Caller("tenant_admin", TENANT_A_SUB, ("tenant_admin",), tenant_id=TENANT_A)
TENANT_ADMIN_B = Caller("tenant_admin_b", TENANT_B_SUB, ("tenant_admin",), tenant_id=TENANT_B)
# Authenticated, but with no role of this service (e.g. a token meant for another system).
NO_ROLE = Caller("no_role", "01JAD000000000000000000NRX", ("billing_admin",))
CALLERS = (ADMIN, READER, SERVICE, TENANT_ADMIN_A, NO_ROLE)


def sign(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def as_caller(
    caller: Caller, key: Any = SECRET, algorithm: str = "HS256"
) -> tuple[tuple[str, str]]:
    return bearer(sign(caller.claims(), key, algorithm))


def jwt_authorizer(
    key: Any = SECRET, algorithm: str = "HS256", issuer: str | None = None
) -> JwtAuthorizer:
    return JwtAuthorizer(TokenVerifier(VerificationKey(algorithm, key), AUDIENCE, issuer))


@contextlib.asynccontextmanager
async def running_app(
    db_url: str,
    settings: Settings,
    authorizer: Any | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> AsyncIterator[App]:
    app = App(
        # No prober: its results would race the "nothing written" row counts.
        replace(settings, probe_enabled=False),
        db_url,
        authorizer=authorizer or jwt_authorizer(),
        credentials=credentials,
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=0)


def all_services() -> list[ServiceDescriptor]:
    """Every service of every generated module (platform_admin.v1 and the flagd protocols),
    so new ones are included."""
    services: dict[str, ServiceDescriptor] = {}
    for package in (platform_admin.v1, flagd.evaluation.v1, flagd.evaluation.v2, flagd.sync.v1):
        for module in pkgutil.iter_modules(package.__path__):
            if module.name.endswith("_pb2"):
                mod = importlib.import_module(f"{package.__name__}.{module.name}")
                for service in mod.DESCRIPTOR.services_by_name.values():
                    services[service.full_name] = service
    return [services[name] for name in sorted(services)]


def all_methods() -> Iterator[tuple[str, MethodDescriptor]]:
    for service in all_services():
        for method in service.methods:
            yield f"/{service.full_name}/{method.name}", method


def table_counts(sql: psycopg.Connection) -> dict[str, int]:
    """Row count of every table of the schema (found in the catalog, so new tables count too)."""
    tables = [
        name
        for (name,) in sql.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'platform_admin' ORDER BY 1"
        ).fetchall()
    ]
    query = psycopg.sql.SQL(" UNION ALL ").join(
        psycopg.sql.SQL("SELECT {}, count(*) FROM {}").format(
            psycopg.sql.Literal(table), psycopg.sql.Identifier(table)
        )
        for table in tables
    )
    return {name: count for name, count in sql.execute(query).fetchall()}
