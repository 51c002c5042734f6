"""The JSON API: ``POST /api/v1/<Service>/<Method>`` for the unary RPCs the console uses.

A generic transcoding of ``platform_admin.v1``: the body is the request message in protobuf
JSON (google.protobuf.json_format: lowerCamelCase names, int64 as strings, enums by name),
the answer is the response message the same way (fields with default values included). The
call runs the very servicer instance the gRPC port uses, through the gRPC pipeline's steps
(``Pipeline.call_unary``: authorizer and policy, principal, deadline, error mapping, metrics
and access log), so a permission the RPC denies is denied here too, with the same message.

Only :data:`EXPOSED` methods are served (the console's needs; nothing a page does not call);
any other is 404. Errors are server/http/json_errors.py's JSON with the gRPC status's HTTP code:
INVALID_ARGUMENT 400 with ``fieldViolations``, UNAUTHENTICATED 401, PERMISSION_DENIED 403,
NOT_FOUND 404, ABORTED / ALREADY_EXISTS 409, UNAVAILABLE 503, ...

``GET /api/v1/session`` tells the console who the token belongs to and which of these
methods the policy table lets it call (so a reader is shown no edit controls).

Requests must be ``Content-Type: application/json``: a cross-site form cannot send that
without a CORS preflight this listener never approves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message
from platform_admin.v1 import config_pb2, flag_pb2, health_pb2

from domain.errors import InvalidArgument, NotFound
from server.http.auth import authenticate, dev_mode, metadata_of
from server.security import policy

if TYPE_CHECKING:
    from server.app import App

PREFIX = "/api/v1/"
# Service short name -> the methods the console calls. Keep to what a page uses.
EXPOSED: dict[str, tuple[str, ...]] = {
    "HealthService": ("GetPlatformHealth", "ListCheckResults"),
    "FlagService": (
        "ListFlags",
        "GetFlag",
        "UpdateFlag",
        "SetTenantOverride",
        "ArchiveFlag",
        "UnarchiveFlag",
    ),
    "ConfigService": (
        "ListConfigKeys",
        "ListConfigs",
        "SetConfig",
        "ResolveConfig",
        "ListConfigHistory",
    ),
}
_FILES = {
    "HealthService": health_pb2.DESCRIPTOR,
    "FlagService": flag_pb2.DESCRIPTOR,
    "ConfigService": config_pb2.DESCRIPTOR,
}
MAX_JSON_DEPTH = 32


class _Method:
    """One exposed RPC: its full name (policy key), message classes and servicer method."""

    def __init__(self, service: str, name: str, app: App) -> None:
        descriptor = _FILES[service].services_by_name[service]
        method = descriptor.methods_by_name[name]
        self.full_name = f"/{descriptor.full_name}/{name}"
        self.request_class: type[Message] = message_factory.GetMessageClass(method.input_type)
        servicer = app.servicers[descriptor.full_name]
        self.call: Callable[[Any, Any], Awaitable[Any]] = getattr(servicer, name)


def _methods(app: App) -> dict[str, _Method]:
    return {
        f"{service}/{name}": _Method(service, name, app)
        for service, names in EXPOSED.items()
        for name in names
    }


def parse_request(method: _Method, text: str) -> Message:
    request = method.request_class()
    if not text.strip():
        return request
    try:
        json_format.Parse(text, request, max_recursion_depth=MAX_JSON_DEPTH)
    except json_format.ParseError as exc:
        # The parser's message names the field and the problem; no internals in it.
        raise InvalidArgument.field(
            "body", f"not a valid {method.request_class.__name__}: {exc}"
        ) from None
    return request


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def register(application: web.Application, app: App) -> None:
    """Route registrar (App.http_routes): the transcoded RPCs and the session endpoint."""
    methods = _methods(app)

    async def call(request: web.Request) -> web.Response:
        method = methods.get(f"{request.match_info['service']}/{request.match_info['method']}")
        if method is None:
            raise NotFound(f"no JSON API method {request.path}; see the README (Console)")
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(reason="send Content-Type: application/json")
        raw = await request.read()

        async def parse_and_call(body: bytes, context: Any) -> Any:
            # Parsed inside the pipeline: the caller is authorized first (no token, no body
            # parsing), and a malformed body is logged and counted like any refused call.
            try:
                text = body.decode()
            except UnicodeDecodeError:
                raise InvalidArgument.field("body", "is not UTF-8 text") from None
            return await method.call(parse_request(method, text), context)

        response = await app.pipeline.call_unary(
            method.full_name, parse_and_call, raw, metadata_of(request)
        )
        return web.json_response(to_json(response))

    async def session(request: web.Request) -> web.Response:
        who = authenticate(request)
        can = {
            name: policy.is_allowed(method.full_name, who.roles) for name, method in methods.items()
        }
        return web.json_response(
            {
                "devMode": dev_mode(request),
                "subject": who.subject,
                "roles": sorted(who.roles),
                "tenantId": who.tenant_id,
                "tenantScoped": who.is_tenant_scoped,
                "can": can,
            }
        )

    application.router.add_get(PREFIX + "session", session)
    application.router.add_post(PREFIX + "{service}/{method}", call)
