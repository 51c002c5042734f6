"""Starts and stops the HTTP listener and applies what every route shares.

Routes come from registration functions (:data:`RouteRegistrar`): ``App.http_routes`` lists
them, and each is called with the aiohttp application and the App (for the servicers, the
read model, the change stream) before the port opens. Adding a feature means adding one
function to that list; nothing here changes.

Every answer, streamed ones included, gets the security headers below (a strict CSP with no
inline script, nosniff, no framing, no referrer, no caching unless a route says otherwise).
Domain errors raised by a handler become the JSON of server/http/json_errors.py; anything
unexpected becomes a generic 500 and a log line. With authentication off (dev mode, loopback
only) a request must name a loopback host, so a web page on another origin cannot reach the
listener through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from domain.errors import DomainError
from server.http.auth import AUTHORIZER
from server.http.json_errors import error_response, plain_http_error
from server.rpc.pipeline import AllowAll, Authorizer
from server.rpc.pipeline import domain_error as to_domain_error

if TYPE_CHECKING:
    from server.app import App

log = logging.getLogger(__name__)

RouteRegistrar = Callable[[web.Application, "App"], None]

# Request bodies above this are refused with 413 before a handler sees them.
MAX_BODY_BYTES = 1024 * 1024

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    response.headers.setdefault("Cache-Control", "no-store")


def _is_loopback_host(host: str) -> bool:
    """Whether a Host header ("name", "name:port", "[v6]:port") names this machine."""
    name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # any other name, "127.0.0.1.example" included


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if isinstance(request.app[AUTHORIZER], AllowAll) and not _is_loopback_host(request.host):
        return plain_http_error(403, "authentication is off: use a loopback host name")
    try:
        return await handler(request)
    except DomainError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = plain_http_error(exc.status, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:
        return error_response(to_domain_error(exc, f"HTTP {request.method} {request.path}"))


def build_application(
    authorizer: Authorizer, owner: App, registrars: list[RouteRegistrar]
) -> web.Application:
    """The aiohttp application: shared middleware and headers, then every feature's routes."""
    application = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    application[AUTHORIZER] = authorizer
    application.on_response_prepare.append(_security_headers)
    for register in registrars:
        register(application, owner)
    return application


class HttpListener:
    """One App's HTTP port. ``port`` is the bound port after :meth:`start` (for port 0)."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Set by routes that keep responses open (server-sent events) so stop can end them.
        self.on_stop: list[Callable[[], Awaitable[None]]] = []

    async def start(
        self,
        listen: str,
        application: web.Application,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> int:
        host, _, port = listen.rpartition(":")
        # Requests in flight get a second at stop; streams are ended by the on_stop hooks.
        runner = web.AppRunner(
            application, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            host.strip("[]"),
            int(port),
            ssl_context=ssl_context,
            reuse_port=reuse_port or None,
        )
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else int(port)
        scheme = "https" if ssl_context is not None else "http"
        log.info("HTTP listener on %s://%s:%d/", scheme, host, self.port)
        return self.port

    async def stop(self) -> None:
        """Ends open streams, then closes the port; idempotent."""
        for hook in self.on_stop:
            with contextlib.suppress(Exception):
                await hook()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            with contextlib.suppress(Exception):
                await runner.cleanup()
