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


# Authentication off (loopback dev mode): the authorizer binds this to every call. It is
# never a default: code that runs outside a call sees no principal at all.
ANONYMOUS_ADMIN = Principal(subject=None, roles=frozenset({PLATFORM_ADMIN}))

# No default: a handler reached without the pipeline (a handler kind it does not wrap, a
# task started outside a call) must fail, not act as someone.
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")


class NoPrincipal(RuntimeError):
    """The principal was read outside an authenticated call."""


def current() -> Principal:
    try:
        return _current.get()
    except LookupError:
        raise NoPrincipal("no principal bound: this code ran outside the call pipeline") from None


def bind(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)


def unbind(token: contextvars.Token[Principal]) -> None:
    # A stream handler closed from another context (its task was cancelled while blocked
    # in a write, the generator finalised later) has nothing to restore there.
    with contextlib.suppress(ValueError):
        _current.reset(token)
