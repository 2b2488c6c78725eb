"""Who is asking: a verified identity from a signed JWT, or from a trusted gateway header.

No verified identity, no answer: every route that reads documents depends on ``principal``,
which raises 401 when the bearer token is missing, unsigned, expired, for another audience,
or names no user. Trusted-header mode is for deployments behind an internal gateway that has
already authenticated the user; it is off unless configured.

Whatever an identity carries goes into every audit record, so it is bounded and clean: a user
name of at most :data:`MAX_NAME_CHARS` printable characters (not only spaces), at most
``Settings.max_groups`` groups of at most :data:`MAX_NAME_CHARS` each, a token of at most
``Settings.max_token_bytes``. Anything else is refused, never truncated.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt

from rag.config import Settings
from rag.errors import AuthenticationError, EnclaveError

USER_HEADER = "x-enclave-user"
GROUPS_HEADER = "x-enclave-groups"
MAX_NAME_CHARS = 256  # a user name or a group name


class IdentityHeaderError(EnclaveError):
    """The identity headers are malformed (duplicated, not UTF-8): a 400, whatever they say."""


def _clean_name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise AuthenticationError(f"{what} must be a string")
    name = value.strip()
    if not name:
        raise AuthenticationError(f"{what} is empty")
    if len(name) > MAX_NAME_CHARS:
        raise AuthenticationError(f"{what} is longer than {MAX_NAME_CHARS} characters")
    if not name.isprintable():  # control characters, lone surrogates
        raise AuthenticationError(f"{what} holds characters that are not printable")
    return name


def _clean_groups(groups: list[object], settings: Settings, what: str) -> tuple[str, ...]:
    if len(groups) > settings.max_groups:
        raise AuthenticationError(f"{what} names more than {settings.max_groups} groups")
    return tuple(sorted({_clean_name(g, "a group name") for g in groups}))


@dataclass(frozen=True)
class Principal:
    user: str
    groups: tuple[str, ...]
    via: str  # how the identity was verified, "jwt" | "trusted-header": recorded in every audit record


def principal_from_token(token: str, settings: Settings) -> Principal:
    if len(token.encode()) > settings.max_token_bytes:
        raise AuthenticationError(f"invalid bearer token (longer than {settings.max_token_bytes} bytes)")
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
    try:
        user = _clean_name(claims["sub"], "the subject")
        return Principal(user=user, groups=_clean_groups(groups, settings, "the groups claim"), via="jwt")
    except AuthenticationError as exc:
        raise AuthenticationError(f"invalid bearer token ({exc})") from None


def principal_from_headers(authorization: str | None, user_header: str | None, groups_header: str | None,
                           settings: Settings) -> Principal:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("the Authorization header must be 'Bearer <token>'")
        return principal_from_token(token.strip(), settings)
    if settings.trusted_header_mode and user_header:
        if len(groups_header or "") > settings.max_groups * (MAX_NAME_CHARS + 1):
            raise AuthenticationError(f"the {GROUPS_HEADER} header is too long")
        names: list[object] = [g for g in (groups_header or "").split(",") if g.strip()]
        return Principal(user=_clean_name(user_header, f"the {USER_HEADER} header"),
                         groups=_clean_groups(names, settings, f"the {GROUPS_HEADER} header"), via="trusted-header")
    raise AuthenticationError("no verified identity: send 'Authorization: Bearer <token>'")


def issue_token(settings: Settings, user: str, groups: list[str], ttl_s: int = 3600) -> str:
    """For operators and tests: a token the service will accept (needs the signing key)."""
    import time

    now = int(time.time())
    return jwt.encode({"sub": user, "groups": groups, "aud": settings.jwt_audience, "iat": now, "exp": now + ttl_s},
                      settings.jwt_key.get_secret_value(), algorithm=settings.jwt_algorithm)
