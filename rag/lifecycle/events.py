"""Compliance actions as audit records: one hash-chained record per erasure, hold change or reveal.

The record's ``event`` says what was done (counts, ids, a receipt's digest), never the personal
data it was done to; request fields (question, chunks, model) are empty.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from rag.audit import AuditEntry, AuditLog, AuditRecord, Kind, Outcome


def append_event(audit: AuditLog, kind: Kind, user: str, event: Mapping[str, Any], *, via: str = "cli",
                 outcome: Outcome = "ok", purpose: str | None = None,
                 groups: tuple[str, ...] = ()) -> AuditRecord:
    """Chain one compliance record onto the audit log; durable when this returns."""
    return audit.append(AuditEntry(request_id=str(uuid.uuid4()), kind=kind, user=user, groups=groups,
                                   authenticated_via=via, purpose=purpose, question_redacted="",
                                   question_hash="", outcome=outcome, latency_ms=0.0, event=dict(event)))
