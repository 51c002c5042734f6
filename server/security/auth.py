"""Authentication: bearer JWTs verified with PyJWT, then the policy table (policy.py).

A caller sends ``authorization: Bearer <JWT>``. The token is signed with the HS256 secret
(PLATFORM_ADMIN_JWT_SECRET) or with the private half of an RS256/ES256 public key
(PLATFORM_ADMIN_JWT_PUBLIC_KEY_FILE); exactly one algorithm is accepted, so a token can
never choose how it is checked. Audience is always checked, issuer when configured, expiry
with a small leeway for clock skew. Claims: ``sub`` (the principal's ULID, recorded as the
actor of every change), ``roles``, ``tenant_id`` for tenant admins, ``service_id`` for
services.

Failures are UNAUTHENTICATED with a message that tells the caller what to fix (expired,
wrong audience, …) and nothing else: no echo of the token, the key or the expected values.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from domain.errors import PermissionDenied, Unauthenticated
from domain.ids import is_ulid
from server.rpc.pipeline import AllowAll, Authorizer
from server.security import policy
from server.security.principal import ALL_ROLES, SERVICE, TENANT_ADMIN, Principal
from server.settings import Settings, SettingsError, is_loopback

# Clock skew tolerated on exp / nbf / iat between the token issuer and this server.
LEEWAY_S = 30
# gRPC caps metadata at 8 KiB anyway; refuse earlier so nothing large is ever parsed.
MAX_TOKEN_BYTES = 4096
_CACHE_SIZE = 4096
_SERVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")

DEV_MODE_WARNING = (
    "AUTHENTICATION IS OFF: every caller acts as platform_admin. This is local dev mode,"
    " accepted only on a loopback address. Set PLATFORM_ADMIN_JWT_SECRET or"
    " PLATFORM_ADMIN_JWT_PUBLIC_KEY_FILE before exposing the server."
)


@dataclass(frozen=True)
class VerificationKey:
    """The one key and algorithm tokens are checked with."""

    algorithm: str
    key: object


def load_key(settings: Settings) -> VerificationKey:
    """The configured key; SettingsError naming the variable if it is unusable."""
    if settings.jwt_secret:
        return VerificationKey("HS256", settings.jwt_secret)
    name = "PLATFORM_ADMIN_JWT_PUBLIC_KEY_FILE"
    path = settings.jwt_public_key_file
    if not path:
        raise SettingsError(
            "no token verification key: set PLATFORM_ADMIN_JWT_SECRET or"
            " PLATFORM_ADMIN_JWT_PUBLIC_KEY_FILE"
        )
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{name}={path!r}: cannot read the file ({exc.strerror})") from None
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise SettingsError(f"{name}={path!r}: not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise SettingsError(f"{name}={path!r}: RSA keys must have at least 2048 bits")
        return VerificationKey("RS256", key)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return VerificationKey("ES256", key)
    raise SettingsError(f"{name}={path!r}: expected an RSA (RS256) or P-256 EC (ES256) public key")


def _unauthenticated(message: str, reason: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


def _translate(exc: jwt.PyJWTError) -> Unauthenticated:
    """PyJWT's exception → a message for the caller. Order matters: subclasses first."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return _unauthenticated("token has expired: obtain a new one", "TOKEN_EXPIRED")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return _unauthenticated(
            "token is not valid yet (nbf or iat in the future)", "TOKEN_NOT_YET_VALID"
        )
    if isinstance(exc, jwt.InvalidAudienceError):
        return _unauthenticated("token audience is not this service", "TOKEN_WRONG_AUDIENCE")
    if isinstance(exc, jwt.InvalidIssuerError):
        return _unauthenticated("token issuer is not trusted", "TOKEN_WRONG_ISSUER")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return _unauthenticated(
            "token is signed with an algorithm this server does not accept",
            "TOKEN_WRONG_ALGORITHM",
        )
    if isinstance(exc, jwt.InvalidSignatureError):
        return _unauthenticated("token signature does not verify", "TOKEN_BAD_SIGNATURE")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return _unauthenticated(f"token lacks the '{exc.claim}' claim", "TOKEN_MISSING_CLAIM")
    if isinstance(exc, jwt.DecodeError):
        return _unauthenticated("token is not a well-formed JWT", "TOKEN_MALFORMED")
    return _unauthenticated("token is invalid", "TOKEN_INVALID")


def _claims_error(message: str) -> Unauthenticated:
    return _unauthenticated(message, "TOKEN_BAD_CLAIMS")


def principal_from_claims(claims: dict[str, object]) -> Principal:
    """Checks the claims this service relies on and builds the principal."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not is_ulid(sub.upper()):
        raise _claims_error("token 'sub' must be the principal's ULID")
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise _claims_error("token 'roles' must be an array of strings")
    # Roles meant for other services may share the token; only ours matter here.
    known = frozenset(r for r in roles if r in ALL_ROLES)
    tenant_id = claims.get("tenant_id")
    if tenant_id is not None and (not isinstance(tenant_id, str) or not is_ulid(tenant_id.upper())):
        raise _claims_error("token 'tenant_id' must be a ULID")
    if TENANT_ADMIN in known and not tenant_id:
        raise _claims_error("a tenant_admin token must carry 'tenant_id'")
    service_id = claims.get("service_id")
    if service_id is not None and (
        not isinstance(service_id, str) or not _SERVICE_ID_RE.fullmatch(service_id)
    ):
        raise _claims_error("token 'service_id' must be 1-100 letters, digits or . _ : -")
    if SERVICE in known and not service_id:
        raise _claims_error("a service token must carry 'service_id'")
    return Principal(
        subject=sub.upper(),
        roles=known,
        tenant_id=tenant_id.upper() if isinstance(tenant_id, str) else None,
        service_id=service_id if isinstance(service_id, str) else None,
    )


class TokenVerifier:
    """Verifies bearer tokens; verified tokens are remembered until they expire."""

    def __init__(self, key: VerificationKey, audience: str, issuer: str | None = None) -> None:
        self.key = key
        self.audience = audience
        self.issuer = issuer
        required = ["exp", "sub", "aud", "roles"] + (["iss"] if issuer else [])
        self._options = {"require": required}
        self._cache: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None:
            principal, expires_at = cached
            if time.time() < expires_at:
                return principal
            del self._cache[token]
        if len(token) > MAX_TOKEN_BYTES:
            raise _unauthenticated("token is too large", "TOKEN_MALFORMED")
        try:
            claims = jwt.decode(
                token,
                self.key.key,  # type: ignore[arg-type]
                algorithms=[self.key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.PyJWTError as exc:
            raise _translate(exc) from None
        principal = principal_from_claims(claims)
        exp = claims["exp"]
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[token] = (principal, float(exp) + LEEWAY_S)
        return principal


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    values = [value for key, value in metadata if key == "authorization"]
    if not values:
        raise _unauthenticated(
            "missing credentials: send metadata 'authorization: Bearer <token>'", "TOKEN_MISSING"
        )
    if len(values) > 1:
        raise _unauthenticated("send exactly one 'authorization' metadata entry", "TOKEN_MALFORMED")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthenticated(
            "the 'authorization' metadata must be 'Bearer <token>'", "TOKEN_MALFORMED"
        )
    return token


class JwtAuthorizer:
    """The pipeline's Authorizer: authenticate the bearer token, then apply the policy."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    def authenticate(self, metadata: tuple[tuple[str, str | bytes], ...]) -> Principal:
        """Who the token says the caller is, whatever it may call (the console's sign-in)."""
        return self.verifier.verify(bearer_token(metadata))

    def authorize(self, method: str, metadata: tuple[tuple[str, str | bytes], ...]) -> Principal:
        principal = self.verifier.verify(bearer_token(metadata))
        if not policy.is_allowed(method, principal.roles):
            rpc = method.rsplit(".", 1)[-1]
            held = ", ".join(sorted(principal.roles)) or "no role of this service"
            raise PermissionDenied(
                f"the caller's roles ({held}) do not allow {rpc}", reason="ROLE_NOT_ALLOWED"
            )
        return principal


def authorizer_for(settings: Settings) -> Authorizer:
    """The authorizer ``serve`` runs with; SettingsError if the configuration is unsafe.

    Authentication off is dev mode: accepted only on a loopback address, where nobody but
    this machine can call. Anywhere else the server refuses to start.
    """
    if settings.auth == "off":
        for name, listen in (
            ("PLATFORM_ADMIN_LISTEN", settings.listen),
            ("PLATFORM_ADMIN_HTTP_LISTEN", settings.http_listen),
        ):
            if listen is not None and not is_loopback(listen):
                raise SettingsError(
                    f"refusing to listen on {listen} ({name}) with authentication off:"
                    " set PLATFORM_ADMIN_JWT_SECRET (HS256) or PLATFORM_ADMIN_JWT_PUBLIC_KEY_FILE"
                    " (RS256/ES256), or listen on 127.0.0.1 for local development"
                )
        return AllowAll()
    verifier = TokenVerifier(load_key(settings), settings.jwt_audience, settings.jwt_issuer)
    return JwtAuthorizer(verifier)


def mint(
    secret: str,
    *,
    sub: str,
    roles: Iterable[str],
    audience: str,
    ttl_s: int,
    issuer: str | None = None,
    tenant_id: str | None = None,
    service_id: str | None = None,
) -> str:
    """An HS256 token for tests and local use (``platform-admin token``)."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": sub,
        "roles": list(roles),
        "aud": audience,
        "iat": now,
        "exp": now + ttl_s,
        "jti": uuid.uuid4().hex,
    }
    if issuer:
        claims["iss"] = issuer
    if tenant_id:
        claims["tenant_id"] = tenant_id
    if service_id:
        claims["service_id"] = service_id
    return jwt.encode(claims, secret, algorithm="HS256")
