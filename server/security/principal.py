"""Who is calling: the authenticated principal of the current RPC.

The call pipeline sets it once per call (server/rpc/pipeline.py); servicers read it with
:func:`current` to record the actor and to scope what a tenant may see.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

PLATFORM_ADMIN = "platform_admin"
PLATFORM_READER = "platform_reader"
SERVICE = "service"
TENANT_ADMIN = "tenant_admin"
ALL_ROLES = frozenset({PLATFORM_ADMIN, PLATFORM_READER, SERVICE, TENANT_ADMIN})


@dataclass(frozen=True)
class Principal:
    subject: str | None
    roles: frozenset[str]
    tenant_id: str | None = None
    service_id: str | None = None

    def has(self, role: str) -> bool:
        return role in self.roles

    @property
    def is_tenant_scoped(self) -> bool:
        """A tenant admin with no broader role: sees only its own tenant."""
        return TENANT_ADMIN in self.roles and not (self.roles & {PLATFORM_ADMIN, PLATFORM_READER})


# Authentication off (loopback dev mode): every call acts as an anonymous platform admin.
ANONYMOUS_ADMIN = Principal(subject=None, roles=frozenset({PLATFORM_ADMIN}))

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "principal", default=ANONYMOUS_ADMIN
)


def current() -> Principal:
    return _current.get()


def bind(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)


def unbind(token: contextvars.Token[Principal]) -> None:
    # A stream handler closed from another context (its task was cancelled while blocked
    # in a write, the generator finalised later) has nothing to restore there.
    with contextlib.suppress(ValueError):
        _current.reset(token)
