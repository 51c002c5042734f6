"""Authentication and roles for HTTP routes: the gRPC authorizer, fed from HTTP headers.

The ``Authorization: Bearer <JWT>`` header becomes the ``authorization`` metadata entry the
gRPC authorizer (server/security/auth.py) reads, so tokens, claims, the policy table
(server/security/policy.py) and their error messages are exactly those of gRPC. A route
names the RPC whose permission it needs; a route for which no RPC exists must not be added.
"""

from __future__ import annotations

from aiohttp import web

from server.rpc.pipeline import AllowAll, Authorizer
from server.security.principal import Principal

AUTHORIZER = web.AppKey("authorizer", Authorizer)

Metadata = tuple[tuple[str, str | bytes], ...]


def metadata_of(request: web.Request) -> Metadata:
    """The request headers the authorizer and the access log read, as gRPC metadata."""
    entries: list[tuple[str, str | bytes]] = [
        ("authorization", value) for value in request.headers.getall("Authorization", [])
    ]
    request_id = request.headers.get("X-Request-Id")
    if request_id:
        entries.append(("x-request-id", request_id))
    return tuple(entries)


def authorizer_of(request: web.Request) -> Authorizer:
    return request.app[AUTHORIZER]


def authorize(request: web.Request, method: str) -> Principal:
    """The caller, if it may call the RPC ``method`` ("/pkg.Service/Rpc"); else a DomainError
    (Unauthenticated -> 401, PermissionDenied -> 403 through the listener's error mapping)."""
    return authorizer_of(request).authorize(method, metadata_of(request))


def authenticate(request: web.Request) -> Principal:
    """The caller, whatever it may call: for the console's sign-in (which roles to show)."""
    authorizer = authorizer_of(request)
    identify = getattr(authorizer, "authenticate", None)
    if identify is None:
        raise TypeError(f"{type(authorizer).__name__} cannot authenticate without a method")
    principal: Principal = identify(metadata_of(request))
    return principal


def dev_mode(request: web.Request) -> bool:
    """Authentication is off: every caller is the anonymous platform admin (loopback only)."""
    return isinstance(authorizer_of(request), AllowAll)
