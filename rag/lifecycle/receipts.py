"""Erasure receipts: a JSON account of one erasure, sealed into the audit hash chain.

A receipt is ``{"receipt": BODY, "audit": {"seq": n, "record_hash": h}}``. BODY says what was
asked, by whom, when, the counts per store before and after, the probe results and the index
generations before and after. Sealing appends an audit record (kind ``erase`` or ``retention``)
whose ``event.receipt_sha256`` is the sha256 of BODY's canonical JSON (RFC 8785), and returns the
record's seq and hash. :func:`verify_receipt` recomputes the digest, finds that record, checks its
hash and the whole chain: an edited receipt, or a receipt whose record was changed, fails.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.audit import AuditLog, Kind
from rag.audit.records import canonical_json
from rag.errors import EnclaveError
from rag.lifecycle.events import append_event

RECEIPT_FORMAT = "enclave-erasure-receipt/1"


class ReceiptInvalidError(EnclaveError):
    """A receipt file is not a receipt (not JSON, or lacking its parts)."""


def receipt_digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(body)).encode("utf-8")).hexdigest()


def seal(audit: AuditLog, body: Mapping[str, Any], *, kind: Kind, user: str, via: str = "cli",
         summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Append the receipt's digest (and a summary without personal data) to the chain; return the receipt."""
    digest = receipt_digest(body)
    event = {"receipt_format": RECEIPT_FORMAT, "receipt_id": body.get("id"), "receipt_sha256": digest,
             **(summary or {})}
    record = append_event(audit, kind, user, event, via=via, outcome="ok" if body.get("complete") else "error")
    return {"receipt": dict(body), "audit": {"seq": record.seq, "record_hash": record.record_hash}}


@dataclass(frozen=True)
class ReceiptCheck:
    ok: bool
    problem: str | None = None
    seq: int | None = None


def load_receipt(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReceiptInvalidError(f"{path} is not a readable JSON receipt ({type(exc).__name__})") from exc
    parts_missing = not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in ("receipt", "audit"))
    if parts_missing:
        raise ReceiptInvalidError(f"{path} is not an erasure receipt: it lacks its 'receipt' or 'audit' part")
    receipt: dict[str, Any] = data
    return receipt


def verify_receipt(receipt: Mapping[str, Any], audit: AuditLog) -> ReceiptCheck:
    """Whether the receipt is the one sealed into the chain, unedited, and the chain itself verifies."""
    body, sealed = receipt.get("receipt"), receipt.get("audit")
    if not isinstance(body, dict) or not isinstance(sealed, dict) or body.get("format") != RECEIPT_FORMAT:
        return ReceiptCheck(False, "not an erasure receipt of this format")
    seq = sealed.get("seq")
    if type(seq) is not int:
        return ReceiptCheck(False, "the receipt names no audit seq")
    chain = audit.verify()
    if not chain.ok:
        return ReceiptCheck(False, f"the audit chain does not verify (seq {chain.first_bad_seq}: {chain.problem})", seq)
    record = None
    with closing(audit.records(max_seq=seq)) as stored:
        for rec in stored:
            record = rec
    if record is None or record.seq != seq:
        return ReceiptCheck(False, f"the audit log has no record seq {seq}", seq)
    if record.record_hash != sealed.get("record_hash"):
        return ReceiptCheck(False, f"audit record seq {seq} has another hash than the receipt names", seq)
    event = record.body.get("event") or {}
    if record.kind not in ("erase", "retention") or event.get("receipt_format") != RECEIPT_FORMAT:
        return ReceiptCheck(False, f"audit record seq {seq} is not an erasure receipt's record", seq)
    try:
        digest = receipt_digest(body)
    except (TypeError, ValueError):
        return ReceiptCheck(False, "the receipt body cannot be canonicalised", seq)
    if event.get("receipt_sha256") != digest:
        return ReceiptCheck(False, f"the receipt was edited: its digest differs from the one sealed at seq {seq}", seq)
    return ReceiptCheck(True, None, seq)
