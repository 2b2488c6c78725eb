"""``enclave token``: a signed bearer token for a user and groups, to try the chat page or the API.

For an operator on the service's host: it needs the signing key (``ENCLAVE_JWT_KEY``), so whoever
can run it can already act as anyone. In production the organisation's identity provider issues
tokens, or a gateway sets identity headers (``ENCLAVE_TRUSTED_HEADER_MODE``).
"""

from __future__ import annotations

import re

import click

from rag.cli.options import parse_groups
from rag.config import load_settings
from rag.errors import ConfigurationError

_TTL = re.compile(r"(\d+)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL_S = 30 * 86400


def parse_ttl(value: str) -> int:
    """``90``, ``90s``, ``15m``, ``8h``, ``7d`` as seconds (at least 1 s, at most 30 days)."""
    match = _TTL.fullmatch(value.strip().lower())
    if match is None:
        raise click.BadParameter(f"{value!r} is not a duration such as 900s, 15m, 8h or 7d")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not 1 <= seconds <= MAX_TTL_S:
        raise click.BadParameter("the lifetime must be between 1 second and 30 days")
    return seconds


@click.command()
@click.option("--user", required=True, help="Who the token names (its subject, recorded in every audit record).")
@click.option("--groups", callback=parse_groups, default="", help="Comma-separated groups: what the user may read.")
@click.option("--ttl", default="8h", show_default=True, help="Lifetime: 900s, 15m, 8h, 7d (at most 30 days).")
def token(user: str, groups: tuple[str, ...], ttl: str) -> None:
    """Print a bearer token for USER in GROUPS, signed with ENCLAVE_JWT_KEY."""
    from rag.service.auth import issue_token

    settings = load_settings()
    if not settings.jwt_key.get_secret_value():
        raise ConfigurationError("ENCLAVE_JWT_KEY is not set: the service could not verify the token")
    if not user.strip():
        raise click.BadParameter("the user must not be blank", param_hint="--user")
    click.echo(issue_token(settings, user.strip(), list(groups), ttl_s=parse_ttl(ttl)))
