"""OFREP (the OpenFeature Remote Evaluation Protocol) on the HTTP listener (server/http/).

* ``POST /ofrep/v1/evaluate/flags/{key}``: one flag or ``config:`` key;
* ``POST /ofrep/v1/evaluate/flags``: every live flag and config key, with an ``ETag``
  (a digest of the answer) and ``If-None-Match`` → 304 when nothing changed for the caller.

The body is ``{"context": {...}}`` (``Content-Type: application/json``). Answers come from
:class:`~server.openfeature.answers.Answers`, exactly as flagd RPC mode's. Success bodies
always carry ``variant`` and ``reason`` (the Python OFREP provider reads both); an
archived flag is reason DISABLED with no value, so providers return the code default.
Errors use OFREP's bodies: ``{"key", "errorCode", "errorDetails"}`` with FLAG_NOT_FOUND
(404), TYPE_MISMATCH / INVALID_CONTEXT / TARGETING_KEY_MISSING / PARSE_ERROR (400),
GENERAL (500/503); 401 and 403 have no body; 429 (shedding) has ``Retry-After``.

Each request runs through the gRPC pipeline's steps (``Pipeline.call_unary``: bearer JWT
from ``Authorization``, the policy line of :data:`EVALUATE_FLAG` / :data:`EVALUATE_BULK`,
deadline, metrics and access log), so auth and roles are those of gRPC.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from domain.errors import (
    DomainError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from server.http.auth import metadata_of
from server.openfeature.answers import Answer, shown
from server.openfeature.codes import ErrorCode
from server.openfeature.context import target_of

if TYPE_CHECKING:
    from server.app import App

# Policy lines (server/security/policy.py) and the method names metrics and logs show.
EVALUATE_FLAG = "/ofrep.v1.OFREP/EvaluateFlag"
EVALUATE_BULK = "/ofrep.v1.OFREP/EvaluateFlagsBulk"
PREFIX = "/ofrep/v1/evaluate/flags"
DISABLED_VARIANT = "disabled"
# The codes a 400 may carry; any other invalid argument is the context's fault.
_BAD_REQUEST_CODES = frozenset(
    (
        ErrorCode.TYPE_MISMATCH,
        ErrorCode.INVALID_CONTEXT,
        ErrorCode.TARGETING_KEY_MISSING,
        ErrorCode.PARSE_ERROR,
    )
)
RETRY_AFTER_S = "1"
# Bulk answers kept (one per tenant and node asked about; about 100 kB each for 1,000
# flags, so a full cache is some tens of MB); a full cache starts over.
BULK_CACHE_LIMIT = 256
_JSON = "application/json"


def _parse_error(description: str) -> InvalidArgument:
    error = InvalidArgument.field("body", description)
    error.reason = ErrorCode.PARSE_ERROR
    return error


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return web.Response(text=text, status=status, content_type=_JSON, headers=headers)


def answer_body(answer: Answer) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": answer.key,
        "reason": answer.reason,
        "variant": answer.variant if answer.variant is not None else DISABLED_VARIANT,
        "metadata": answer.metadata,
    }
    if answer.value is not None:
        body["value"] = answer.value
    return body


def error_answer(error: DomainError, key: str | None = None) -> web.Response:
    """The OFREP answer for a refused evaluation (never a stack trace, never a 500 body)."""
    if isinstance(error, Unauthenticated):
        return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(error, PermissionDenied):
        return web.Response(status=403)
    if isinstance(error, ResourceExhausted):
        return web.Response(status=429, headers={"Retry-After": RETRY_AFTER_S})
    body: dict[str, Any] = {} if key is None else {"key": shown(key)}
    code: str
    if isinstance(error, NotFound) and error.reason == ErrorCode.FLAG_NOT_FOUND:
        status, code = 404, ErrorCode.FLAG_NOT_FOUND
    elif isinstance(error, InvalidArgument):
        status = 400
        code = error.reason
        if code not in _BAD_REQUEST_CODES:
            code = ErrorCode.INVALID_CONTEXT
    elif isinstance(error, Unavailable):
        body.update(errorCode=ErrorCode.GENERAL, errorDetails=error.message)
        return _json(body, 503, {"Retry-After": RETRY_AFTER_S})
    else:
        body.update(errorCode=ErrorCode.GENERAL, errorDetails="internal error")
        return _json(body, 500)
    body.update(errorCode=code, errorDetails=error.message)
    return _json(body, status)


async def _context(request: web.Request) -> dict[str, Any]:
    """The request's evaluation context; PARSE_ERROR / INVALID_CONTEXT when it is not one."""
    if request.content_type != _JSON:
        raise _parse_error(f"send Content-Type: {_JSON} (got {shown(request.content_type)})")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _parse_error(f"the body is over {request.client_max_size} bytes") from None
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise _parse_error("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _parse_error('the body must be a JSON object: {"context": {...}}')
    context = body.get("context", {})
    if context is None:
        return {}
    if not isinstance(context, dict):
        error = InvalidArgument.field("context", "must be a JSON object")
        error.reason = ErrorCode.INVALID_CONTEXT
        raise error
    return context


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip() for c in if_none_match.split(",")]
    return "*" in candidates or etag in candidates or f"W/{etag}" in candidates


def register(application: web.Application, app: App) -> None:
    """Route registrar (App.http_routes): OFREP's single and bulk evaluation."""
    answers = app.openfeature.answers
    pipeline = app.pipeline

    async def evaluate_flag(request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]

        async def evaluate(request: web.Request, _context_: Any) -> Answer:
            return answers.evaluate(key, target_of(await _context(request)))

        try:
            answer: Answer = await pipeline.call_unary(
                EVALUATE_FLAG, evaluate, request, metadata_of(request)
            )
        except DomainError as error:
            return error_answer(error, key)
        return _json(answer_body(answer))

    read_model = app.read_model
    # (tenant, node) -> (read model generation, body, etag): a repeated bulk question is
    # answered without evaluating a thousand flags again until something changes.
    bulk_cache: dict[tuple[str | None, str | None], tuple[int, bytes, str]] = {}

    async def evaluate_bulk(request: web.Request) -> web.StreamResponse:
        async def evaluate(request: web.Request, _context_: Any) -> tuple[bytes, str]:
            target = target_of(await _context(request))
            cache_key = (target.tenant_id, target.node_id)
            generation = read_model.generation
            cached = bulk_cache.get(cache_key)
            if cached is not None and cached[0] == generation:
                return cached[1], cached[2]
            flags = [answer_body(a) for a in answers.evaluate_all(target)]
            body = json.dumps({"flags": flags}, separators=(",", ":"), ensure_ascii=False)
            encoded = body.encode()
            etag = etag_of(encoded)
            if len(bulk_cache) >= BULK_CACHE_LIMIT:
                bulk_cache.clear()
            bulk_cache[cache_key] = (generation, encoded, etag)
            return encoded, etag

        try:
            encoded, etag = await pipeline.call_unary(
                EVALUATE_BULK, evaluate, request, metadata_of(request)
            )
        except DomainError as error:
            return error_answer(error)
        if _matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=encoded, content_type=_JSON, headers={"ETag": etag})

    application.router.add_post(PREFIX, evaluate_bulk)
    application.router.add_post(PREFIX + "/{key}", evaluate_flag)
