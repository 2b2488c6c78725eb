"""Options several ``enclave`` commands share."""

from __future__ import annotations

import click


def parse_groups(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    """``--groups a,b``: parsed once, here, into a tuple of group names (blanks dropped)."""
    return tuple(g.strip() for g in value.split(",") if g.strip())
