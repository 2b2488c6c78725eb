"""Audit exports: JSONL or CSV files a compliance officer can verify away from the database.

An export holds the selected records, each with its ``seq``, ``prev_hash``, ``record_hash`` and
full content, and ends with a trailer: the filter used, the number of records, first and last
seq, a digest of the exported record hashes (sha256 over them joined by newlines), and the chain
head of the whole log at export time. :func:`verify_export` recomputes each record's hash from its
content, checks chaining wherever consecutive seqs are both exported (and genesis for seq 1),
allows gaps only when the trailer declares a filter and checks every record matches that filter,
checks count, first/last seq and digest, and, when the last exported record is the head, that its
hash equals the trailer's head hash. An unfiltered export is therefore the whole chain from genesis
to head. In CSV the readable columns (one per top-level field; lists and objects as JSON; text that
a spreadsheet would run as a formula is prefixed with ``'``) are checked against the
``canonical_json`` column, and the trailer is a last row with ``seq`` = ``trailer``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import rfc8785

from rag.audit.records import (
    FIELDS_BY_VERSION,
    GENESIS_HASH,
    RECORD_FIELDS,
    ChainHead,
    StoredAuditRecord,
    VerifyReport,
    canonical_json,
    iso,
    parse_iso,
    record_problem,
    text_sha256,
)

EXPORT_FORMAT = "enclave-audit-export/1"
ExportFormat = Literal["jsonl", "csv"]

def _csv_columns(fields: tuple[str, ...]) -> tuple[str, ...]:
    return ("seq", "prev_hash", "record_hash", *(f for f in fields if f not in ("seq", "prev_hash")), "canonical_json")


_CSV_COLUMNS = _csv_columns(RECORD_FIELDS)
# Exports written before a record format change keep their header, and verify as they are.
_KNOWN_CSV_HEADERS = {_csv_columns(fields) for fields in FIELDS_BY_VERSION.values()}
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _digest(record_hashes: Iterable[str]) -> str:
    return text_sha256("\n".join(record_hashes))


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        # A spreadsheet would run a cell starting like a formula; the canonical_json column keeps the value.
        return "'" + value if value.startswith(_FORMULA_STARTS) else value
    return canonical_json(value)


def _csv_row(seq: int, prev_hash: str, record_hash: str, content: str,
             columns: tuple[str, ...] = _CSV_COLUMNS) -> list[str]:
    body = json.loads(content)
    return [str(seq), prev_hash, record_hash, *(_csv_cell(body.get(f)) for f in columns[3:-1]), content]


def write_export(out: Path, fmt: ExportFormat, head: ChainHead, records: Iterable[StoredAuditRecord], *,
                 since: datetime | None, until: datetime | None, user: str | None) -> int:
    """Write ``records`` (selected by the filter given) and a trailer naming ``head`` to ``out``, atomically.

    Returns the record count. A failed export leaves no partial file behind.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    hashes: list[str] = []
    try:
        _write(tmp, fmt, head, records, since, until, user, hashes)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return len(hashes)


def _write(tmp: Path, fmt: ExportFormat, head: ChainHead, records: Iterable[StoredAuditRecord],
           since: datetime | None, until: datetime | None, user: str | None, hashes: list[str]) -> None:
    first_seq: int | None = None
    last_seq: int | None = None
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh) if fmt == "csv" else None
        if writer is not None:
            writer.writerow(_CSV_COLUMNS)
        for rec in records:
            first_seq = rec.seq if first_seq is None else first_seq
            last_seq = rec.seq
            hashes.append(rec.record_hash)
            if writer is None:
                fh.write(json.dumps({"type": "record", "seq": rec.seq, "prev_hash": rec.prev_hash,
                                     "record_hash": rec.record_hash, "record": json.loads(rec.content)},
                                    ensure_ascii=False, sort_keys=True) + "\n")
            else:
                writer.writerow(_csv_row(rec.seq, rec.prev_hash, rec.record_hash, rec.content))
        trailer = {
            "type": "trailer", "format": EXPORT_FORMAT, "exported_at": iso(datetime.now(UTC)),
            "filter": {"since": iso(since) if since else None, "until": iso(until) if until else None,
                       "user": user},
            "records": len(hashes), "first_seq": first_seq, "last_seq": last_seq,
            "records_digest": _digest(hashes), "head_seq": head.seq, "head_hash": head.hash,
        }
        if writer is None:
            fh.write(canonical_json(trailer) + "\n")
        else:
            writer.writerow(["trailer", *[""] * (len(_CSV_COLUMNS) - 2), canonical_json(trailer)])
        fh.flush()
        os.fsync(fh.fileno())


@dataclass(frozen=True)
class _ExportedRecord:
    seq: int
    prev_hash: str
    record_hash: str
    content: str


class _ExportUnreadable(Exception):  # noqa: N818  # internal signal turned into a VerifyReport
    def __init__(self, problem: str, seq: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.seq = seq


def _read_jsonl(path: Path) -> tuple[list[_ExportedRecord], dict[str, Any]]:
    records: list[_ExportedRecord] = []
    trailer: dict[str, Any] | None = None
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if trailer is not None:
                raise _ExportUnreadable(f"line {line_no} follows the trailer")
            try:
                item = json.loads(line)
                if item.get("type") == "trailer":
                    trailer = item
                    continue
                if item.get("type") != "record":
                    raise _ExportUnreadable(f"line {line_no} is neither a record nor the trailer")
                records.append(_ExportedRecord(int(item["seq"]), str(item["prev_hash"]), str(item["record_hash"]),
                                               canonical_json(item["record"])))
            except (ValueError, KeyError, TypeError, AttributeError, rfc8785.CanonicalizationError) as exc:
                raise _ExportUnreadable(f"line {line_no} is not a valid export line ({type(exc).__name__})") from exc
    if trailer is None:
        raise _ExportUnreadable("the export has no trailer (it was truncated)")
    return records, trailer


def _read_csv(path: Path) -> tuple[list[_ExportedRecord], dict[str, Any]]:
    records: list[_ExportedRecord] = []
    trailer: dict[str, Any] | None = None
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header) not in _KNOWN_CSV_HEADERS:
            raise _ExportUnreadable("the CSV header is not that of an Enclave audit export")
        columns = tuple(header)
        for row_no, row in enumerate(reader, start=2):
            if trailer is not None:
                raise _ExportUnreadable(f"row {row_no} follows the trailer")
            if len(row) != len(columns):
                raise _ExportUnreadable(f"row {row_no} has {len(row)} columns, not {len(columns)}")
            try:
                if row[0] == "trailer":
                    trailer = json.loads(row[-1])
                    continue
                rec = _ExportedRecord(int(row[0]), row[1], row[2], row[-1])
                expected = _csv_row(rec.seq, rec.prev_hash, rec.record_hash, rec.content, columns)
            except (ValueError, AttributeError) as exc:
                raise _ExportUnreadable(f"row {row_no} is not a valid export row ({type(exc).__name__})") from exc
            if row != expected:
                column = next(c for c, got, want in zip(columns, row, expected, strict=True) if got != want)
                raise _ExportUnreadable(f"column {column} differs from canonical_json", seq=rec.seq)
            records.append(rec)
    if trailer is None:
        raise _ExportUnreadable("the export has no trailer (it was truncated)")
    return records, trailer


def verify_export(path: Path) -> VerifyReport:
    """Check an export on its own: record hashes, chaining, declared filter, count, digest and head.

    ``head_hash`` and ``head_seq`` in the report are the trailer's chain head; compare them with
    an anchored head or with :meth:`AuditLog.head` of the live log.
    """
    path = Path(path)
    with path.open("rb") as fh:
        is_csv = not fh.read(1).startswith(b"{")
    try:
        records, trailer = _read_csv(path) if is_csv else _read_jsonl(path)
    except _ExportUnreadable as exc:
        return VerifyReport(ok=False, records=0, head_hash="", first_bad_seq=exc.seq, problem=exc.problem)
    try:
        head_seq, head_hash = int(trailer["head_seq"]), str(trailer["head_hash"])
        filt = trailer["filter"]
        since = parse_iso(filt["since"]) if filt.get("since") else None
        until = parse_iso(filt["until"]) if filt.get("until") else None
        user = filt.get("user")
        declared = (trailer["records"], trailer["first_seq"], trailer["last_seq"], trailer["records_digest"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return VerifyReport(ok=False, records=0, head_hash="", problem="the trailer is malformed")
    filtered = since is not None or until is not None or user is not None
    count = 0

    def bad(seq: int | None, problem: str) -> VerifyReport:
        return VerifyReport(ok=False, records=count, head_hash=head_hash, first_bad_seq=seq, problem=problem,
                            head_seq=head_seq)

    previous: _ExportedRecord | None = None
    for rec in records:
        problem = record_problem(rec.seq, rec.prev_hash, rec.record_hash, rec.content)
        if problem is not None:
            return bad(rec.seq, problem)
        if previous is not None and rec.seq <= previous.seq:
            return bad(rec.seq, f"seq {rec.seq} follows seq {previous.seq}: records reordered or duplicated")
        last_seen = 0 if previous is None else previous.seq
        if rec.seq == last_seen + 1:
            expected_prev = GENESIS_HASH if previous is None else previous.record_hash
            if rec.prev_hash != expected_prev:
                return bad(rec.seq, "prev_hash does not equal the previous record's hash")
        elif not filtered:
            return bad(last_seen + 1, f"seq {last_seen + 1} is missing from an export that declares no filter")
        body = json.loads(rec.content)
        try:
            ts = parse_iso(body["ts"])
        except (TypeError, ValueError):
            return bad(rec.seq, "ts in the content is not a timestamp")
        if (since is not None and ts < since) or (until is not None and ts >= until) or \
                (user is not None and body["user"] != user):
            return bad(rec.seq, "record lies outside the filter the trailer declares")
        if rec.seq > head_seq:
            return bad(rec.seq, f"record seq {rec.seq} lies beyond the trailer's head seq {head_seq}")
        if rec.seq == head_seq and rec.record_hash != head_hash:
            return bad(rec.seq, "the last record's hash differs from the trailer's chain head")
        count += 1
        previous = rec
    actual = (len(records), records[0].seq if records else None, records[-1].seq if records else None,
              _digest(r.record_hash for r in records))
    if actual != declared:
        seq = previous.seq if previous is not None else None
        return bad(seq, "record count, first/last seq or digest differ from the trailer (records added or removed)")
    if not filtered and (records[-1].seq if records else 0) != head_seq:
        return bad(head_seq, f"an unfiltered export must end at the head seq {head_seq}")
    return VerifyReport(ok=True, records=count, head_hash=head_hash, head_seq=head_seq)
