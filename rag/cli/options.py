"""Options several ``enclave`` commands share."""

from __future__ import annotations


def split_groups(groups: str) -> list[str]:
    return [g.strip() for g in groups.split(",") if g.strip()]
