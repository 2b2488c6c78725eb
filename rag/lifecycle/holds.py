"""Legal holds: documents (by uri) or whole sources that no erasure may touch until released.

``enclave hold add|list|release`` and retention call :class:`HoldRegistry`; erasure calls
:meth:`HoldRegistry.refuse_if_held` before it removes anything. Every hold change is an audit
record (kind ``hold``) naming the hold, its target and its reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select

from rag.audit import AuditLog
from rag.catalog.models import utcnow
from rag.catalog.store import CatalogStore
from rag.errors import EnclaveError
from rag.lifecycle.events import append_event
from rag.lifecycle.models import Hold

Scope = Literal["document", "source"]


class LegalHoldError(EnclaveError):
    """An erasure reached a document under legal hold: nothing was erased."""


class HoldNotFoundError(EnclaveError):
    """No active hold has the id given."""


@dataclass(frozen=True)
class HoldView:
    id: int
    scope: str
    target: str
    reason: str
    created_by: str
    created_at: datetime
    released_by: str | None = None
    released_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.released_at is None

    def describe(self) -> str:
        return f"hold #{self.id} on {self.scope} {self.target!r} ({self.reason}; placed by {self.created_by})"

    @classmethod
    def of(cls, row: Hold) -> HoldView:
        return cls(row.id, row.scope, row.target, row.reason, row.created_by, row.created_at,
                   row.released_by, row.released_at)


class HoldRegistry:
    def __init__(self, catalog: CatalogStore, audit: AuditLog) -> None:
        self.catalog = catalog
        self.audit = audit

    def add(self, *, scope: Scope, target: str, reason: str, user: str, via: str = "cli") -> HoldView:
        if scope not in ("document", "source"):
            raise EnclaveError(f"a hold is on a document or a source, not a {scope!r}")
        if not reason.strip():
            raise EnclaveError("a hold needs a reason (--reason): the audit record and the refusal name it")
        with self.catalog.session() as s, s.begin():
            row = Hold(scope=scope, target=target, reason=reason.strip(), created_by=user, created_at=utcnow())
            s.add(row)
            s.flush()
            view = HoldView.of(row)
        append_event(self.audit, "hold", user, {"action": "add", "hold_id": view.id, "scope": scope,
                                                "target": target, "reason": view.reason}, via=via)
        return view

    def release(self, hold_id: int, *, user: str, reason: str = "", via: str = "cli") -> HoldView:
        with self.catalog.session() as s, s.begin():
            row = s.get(Hold, hold_id)
            if row is None or row.released_at is not None:
                raise HoldNotFoundError(f"there is no active hold #{hold_id}; `enclave hold list` shows them")
            row.released_by, row.released_at = user, utcnow()
            view = HoldView.of(row)
        append_event(self.audit, "hold", user, {"action": "release", "hold_id": hold_id, "scope": view.scope,
                                                "target": view.target, "reason": reason or None}, via=via)
        return view

    def all(self, include_released: bool = False) -> list[HoldView]:
        with self.catalog.session() as s:
            query = select(Hold).order_by(Hold.id)
            if not include_released:
                query = query.where(Hold.released_at.is_(None))
            return [HoldView.of(r) for r in s.scalars(query)]

    def holds_on(self, uri: str, source: str) -> list[HoldView]:
        """The active holds covering one document of one source."""
        return [h for h in self.all() if (h.scope == "document" and h.target == uri)
                or (h.scope == "source" and h.target == source)]

    def refuse_if_held(self, documents: Iterable[tuple[str, str]]) -> None:
        """Raise :class:`LegalHoldError` naming the hold when any (uri, source) is held."""
        for uri, source in documents:
            held = self.holds_on(uri, source)
            if held:
                raise LegalHoldError(f"document {uri!r} of source {source!r} is under legal {held[0].describe()}: "
                                     "nothing was erased; release the hold first (enclave hold release ID)")
