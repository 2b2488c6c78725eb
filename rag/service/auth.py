"""Who is asking: a verified identity from a signed JWT, or from a trusted gateway header.

No verified identity, no answer: every route that reads documents depends on ``principal``,
which raises 401 when the bearer token is missing, unsigned, expired, for another audience,
or names no user. Trusted-header mode is for deployments behind an internal gateway that has
already authenticated the user; it is off unless configured.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from rag.config import Settings
from rag.errors import AuthenticationError

USER_HEADER = "x-enclave-user"
GROUPS_HEADER = "x-enclave-groups"


@dataclass(frozen=True)
class Principal:
    user: str
    groups: tuple[str, ...]
    via: str  # how the identity was verified, "jwt" | "trusted-header": recorded in every audit record


def principal_from_token(token: str, settings: Settings) -> Principal:
    key = settings.jwt_key.get_secret_value()
    if not key:
        raise AuthenticationError("bearer tokens cannot be verified: ENCLAVE_JWT_KEY is not configured")
    try:
        claims = jwt.decode(token, key, algorithms=[settings.jwt_algorithm], audience=settings.jwt_audience,
                            options={"require": ["exp", "sub"]})
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"invalid bearer token ({type(exc).__name__})") from exc
    groups = claims.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise AuthenticationError("invalid bearer token (groups claim must be a list of strings)")
    user = claims["sub"]
    if not isinstance(user, str) or not user:
        raise AuthenticationError("invalid bearer token (empty subject)")
    return Principal(user=user, groups=tuple(sorted(set(groups))), via="jwt")


def principal_from_headers(authorization: str | None, user_header: str | None, groups_header: str | None,
                           settings: Settings) -> Principal:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
        return principal_from_token(token.strip(), settings)
    if settings.trusted_header_mode and user_header:
        groups = tuple(sorted({g.strip() for g in (groups_header or "").split(",") if g.strip()}))
        return Principal(user=user_header.strip(), groups=groups, via="trusted-header")
    raise AuthenticationError("no verified identity: send 'Authorization: Bearer <token>'")


def issue_token(settings: Settings, user: str, groups: list[str], ttl_s: int = 3600) -> str:
    """For operators and tests: a token the service will accept (needs the signing key)."""
    import time

    now = int(time.time())
    return jwt.encode({"sub": user, "groups": groups, "aud": settings.jwt_audience, "iat": now, "exp": now + ttl_s},
                      settings.jwt_key.get_secret_value(), algorithm=settings.jwt_algorithm)
