"""AuditLog: the append-only, hash-chained audit log in a SQLite or PostgreSQL database.

Place in the flow: ``rag.query`` calls :meth:`AuditLog.append` once per request (search, ask or
chat), after retrieval and generation and before the response is returned; the CLI and compliance
reviewers call :meth:`AuditLog.verify` and :meth:`AuditLog.export`.

*Storage.* One row per record in ``audit_records``: indexed columns ``seq``, ``ts``, ``user_id`` and
``kind`` for querying, ``prev_hash`` and ``record_hash``, and ``content``, the canonical JSON text
of :mod:`rag.audit.records`. The indexed columns are copies for querying; :meth:`AuditLog.verify`
checks they agree with the content.

*Appends* are serialised so the chain never forks: on PostgreSQL with a transaction-level advisory
lock (``pg_advisory_xact_lock``), on SQLite with ``BEGIN IMMEDIATE`` (WAL, ``synchronous=FULL``),
so several service processes on one host share one chain. A unique constraint on ``seq`` is the last
line of defence. ``append`` returns after commit.

*Group commit.* Within a process, appends that arrive while a commit is under way wait for it, and
the next of them writes all waiting records in one transaction (one lock, one head read, one
commit and fsync): under load each fsync carries many records, while each caller still returns only
once its own record is committed and chained. A record that cannot be built fails alone; a failed
transaction fails every record in it, and each of their callers gets the error.

*Append-only.* Triggers refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) even for the owner;
on PostgreSQL ``migrate(app_role=...)`` also revokes UPDATE, DELETE and TRUNCATE from PUBLIC and
the application role and grants it only SELECT and INSERT.

*Verification* walks the chain in ``seq`` order and names the first bad record: a missing seq
(deletion), content that is not canonical or does not hash to ``record_hash`` (edit), a
``prev_hash`` that does not equal the previous ``record_hash`` (insertion, reordering, or an edit
whose hash was recomputed), or an indexed column that disagrees with the content. A keyless hash
chain cannot, by itself, reveal a rewrite of its newest records by someone with write access to
the database (they can recompute every hash after the edit), nor removal of the newest records.
That is closed by anchoring: keep the head (:meth:`AuditLog.head`, or the trailer of any export)
somewhere the database's writers cannot reach and pass it as ``verify(anchor=...)``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Generator, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    select,
    text,
    type_coerce,
)
from sqlalchemy.engine import make_url

from rag.audit.export import ExportFormat, write_export
from rag.audit.records import (
    GENESIS_HASH,
    AuditEntry,
    AuditRecord,
    ChainHead,
    StoredAuditRecord,
    VerifyReport,
    build_content,
    parse_iso,
    record_problem,
    to_utc,
)
from rag.database import SQLITE_BEGIN, make_engine, upgrade_schema
from rag.errors import ConfigurationError

VERSION_TABLE = "enclave_audit_version"
TABLE_NAME = "audit_records"
# pg_advisory_xact_lock key: the first 8 bytes of sha256("enclave.audit.append"), as a signed bigint.
_PG_APPEND_LOCK = int.from_bytes(hashlib.sha256(b"enclave.audit.append").digest()[:8], "big", signed=True)
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"

metadata = MetaData()
audit_records = Table(
    TABLE_NAME,
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("seq", BigInteger, nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False, index=True),
    Column("user_id", String(255), nullable=False, index=True),
    Column("kind", String(16), nullable=False, index=True),
    Column("prev_hash", String(64), nullable=False),
    Column("record_hash", String(64), nullable=False),
    Column("content", Text, nullable=False),
    UniqueConstraint("seq", name="uq_audit_records_seq"),
    UniqueConstraint("record_hash", name="uq_audit_records_record_hash"),
)


class _RawValue(TypeDecorator[Any]):
    """The driver's value, unconverted (SQLite's DateTime conversion raises on a corrupted value)."""

    impl = String
    cache_ok = True


def _column_ts(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)


def _columns_problem(rec: StoredAuditRecord) -> str | None:
    """Whether the indexed columns still agree with the content they were copied from."""
    body = rec.body
    try:
        ts = parse_iso(body["ts"])
    except (TypeError, ValueError):
        return "ts in the content is not a timestamp"
    if rec.ts is None:
        return "ts column is not a timestamp"
    if ts != rec.ts:
        return "ts column differs from the content"
    if body["user"] != rec.user:
        return "user column differs from the content"
    if body["kind"] != rec.kind:
        return "kind column differs from the content"
    return None


class _Pending:
    """One caller's entry waiting in a group commit, and what became of it."""

    __slots__ = ("done", "entry", "error", "record")

    def __init__(self, entry: AuditEntry) -> None:
        self.entry = entry
        self.record: AuditRecord | None = None
        self.error: Exception | None = None
        self.done = False


class AuditLog:
    """The append-only, hash-chained audit log in a SQLite or PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.url = url
        backend = make_url(url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ConfigurationError(f"audit log needs a sqlite or postgresql URL, not a {backend} one")
        self.engine = make_engine(url)
        self.backend = backend
        self._group = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False

    def dispose(self) -> None:
        self.engine.dispose()

    def _write(self) -> Any:
        if self.backend == "sqlite":
            return self.engine.connect().execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
        return self.engine.connect()

    def migrate(self, app_role: str | None = None) -> None:
        """Bring the audit schema to the newest revision (Alembic version table ``enclave_audit_version``).

        On PostgreSQL, ``app_role`` (the role the service connects as) gets SELECT and INSERT on the
        audit table and loses UPDATE, DELETE and TRUNCATE, as PUBLIC does; it may read the version
        table, not write it. Ignored on SQLite.
        """
        with self._write() as conn, conn.begin():
            upgrade_schema(conn, _MIGRATIONS, self.url)
            if app_role and self.backend == "postgresql":
                role = conn.dialect.identifier_preparer.quote(app_role)
                conn.execute(text(f"REVOKE UPDATE, DELETE, TRUNCATE ON {TABLE_NAME} FROM PUBLIC, {role}"))
                conn.execute(text(f"REVOKE ALL ON {VERSION_TABLE} FROM {role}"))
                # reading the revision is how the service checks it was upgraded (rag.schema)
                conn.execute(text(f"GRANT SELECT ON {VERSION_TABLE} TO {role}"))
                conn.execute(text(f"GRANT SELECT, INSERT ON {TABLE_NAME} TO {role}"))
                schema = conn.dialect.identifier_preparer.quote(
                    conn.execute(text("SELECT current_schema()")).scalar_one())
                conn.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {role}"))
                sequence = conn.execute(text(f"SELECT pg_get_serial_sequence('{TABLE_NAME}', 'id')")).scalar_one()
                conn.execute(text(f"GRANT USAGE, SELECT ON SEQUENCE {sequence} TO {role}"))

    def append(self, entry: AuditEntry) -> AuditRecord:
        """Chain one record onto the head and commit it; durable when this returns.

        Concurrent callers share a transaction (group commit); see the module docstring.
        """
        pending = _Pending(entry)
        with self._group:
            self._queue.append(pending)
            while not pending.done and self._writing:
                self._group.wait()
            if not pending.done:  # no commit under way: this caller writes everything waiting
                self._writing = True
                batch, self._queue = self._queue, []
        if not pending.done:
            try:
                self._commit(batch)
            finally:
                with self._group:
                    self._writing = False
                    self._group.notify_all()
        if pending.error is not None:
            raise pending.error
        assert pending.record is not None
        return pending.record

    def _commit(self, batch: list[_Pending]) -> None:
        """Write ``batch`` in one transaction, in order, and mark each entry done (record or error)."""
        written: list[tuple[_Pending, AuditRecord]] = []
        try:
            with self._write() as conn, conn.begin():
                if self.backend == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_APPEND_LOCK})
                head = conn.execute(select(audit_records.c.seq, audit_records.c.record_hash)
                                    .order_by(audit_records.c.seq.desc()).limit(1)).first()
                seq, prev_hash = (0, GENESIS_HASH) if head is None else (head.seq, head.record_hash)
                rows: list[dict[str, Any]] = []
                for p in batch:
                    try:
                        content = build_content(p.entry, seq + 1, prev_hash)
                    except Exception as exc:  # noqa: BLE001  # this entry fails alone; its caller gets the error
                        p.error = exc
                        continue
                    seq += 1
                    record_hash = hashlib.sha256(content.encode("utf-8")).hexdigest()
                    rows.append({"seq": seq, "ts": p.entry.ts, "user_id": p.entry.user, "kind": p.entry.kind,
                                 "prev_hash": prev_hash, "record_hash": record_hash, "content": content})
                    written.append((p, AuditRecord(seq=seq, record_hash=record_hash, id=0)))
                    prev_hash = record_hash
                if rows:
                    insert = audit_records.insert().returning(audit_records.c.id, sort_by_parameter_order=True)
                    ids = conn.execute(insert, rows).scalars().all()
                    written = [(p, AuditRecord(r.seq, r.record_hash, int(i)))
                               for (p, r), i in zip(written, ids, strict=True)]
        except BaseException as exc:
            for p in batch:
                if p.error is None:
                    p.error = exc if isinstance(exc, Exception) else RuntimeError("audit append interrupted")
                p.done = True
            raise
        for p, record in written:
            p.record = record
        for p in batch:
            p.done = True

    def head(self) -> ChainHead:
        """The newest record's seq and hash (seq 0 and the genesis hash for an empty log)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(audit_records.c.seq, audit_records.c.record_hash)
                               .order_by(audit_records.c.seq.desc()).limit(1)).first()
        return ChainHead(0, GENESIS_HASH) if row is None else ChainHead(row.seq, row.record_hash)

    def records(self, since: datetime | None = None, until: datetime | None = None, user: str | None = None,
                max_seq: int | None = None) -> Generator[StoredAuditRecord, None, None]:
        """Stored records in seq order; ``since`` inclusive, ``until`` exclusive."""
        # ts is read as stored and parsed here, so a corrupted value is reported by verify, not raised.
        columns = [c if c.name != "ts" else type_coerce(c, _RawValue()).label("ts") for c in audit_records.c]
        query = select(*columns).order_by(audit_records.c.seq)
        if since is not None:
            query = query.where(audit_records.c.ts >= to_utc(since, "since"))
        if until is not None:
            query = query.where(audit_records.c.ts < to_utc(until, "until"))
        if user is not None:
            query = query.where(audit_records.c.user_id == user)
        if max_seq is not None:
            query = query.where(audit_records.c.seq <= max_seq)
        with self.engine.connect() as conn, conn.begin():
            result = conn.execution_options(stream_results=True, yield_per=1000).execute(query)
            for row in result:
                yield StoredAuditRecord(id=row.id, seq=row.seq, ts=_column_ts(row.ts), user=row.user_id,
                                        kind=row.kind, prev_hash=row.prev_hash, record_hash=row.record_hash,
                                        content=row.content)

    def verify(self, anchor: ChainHead | None = None) -> VerifyReport:
        """Recompute the chain from genesis and name the first bad record.

        ``anchor`` is a head kept elsewhere (an earlier :meth:`head` or export trailer): the record
        at its seq must still exist with its hash, which catches rewrites and removals at the end.
        """
        with closing(self.records()) as stored:
            report = self._walk(stored, anchor)
        return report

    @staticmethod
    def _walk(stored: Iterator[StoredAuditRecord], anchor: ChainHead | None) -> VerifyReport:
        expected_seq, prev = 1, GENESIS_HASH
        count = 0

        def bad(seq: int, problem: str) -> VerifyReport:
            return VerifyReport(ok=False, records=count, head_hash=prev, first_bad_seq=seq, problem=problem,
                                head_seq=expected_seq - 1)

        for rec in stored:
            if rec.seq != expected_seq:
                if not isinstance(rec.seq, int) or rec.seq > expected_seq:
                    return bad(expected_seq, f"seq {expected_seq} is missing (next stored is seq {rec.seq}): "
                                             "a record was deleted or renumbered")
                return bad(rec.seq, f"seq {rec.seq} is out of order")
            problem = record_problem(rec.seq, rec.prev_hash, rec.record_hash, rec.content)
            if problem is None and rec.prev_hash != prev:
                problem = ("prev_hash does not equal the previous record's hash "
                           "(a record was inserted, reordered, or edited with its hash recomputed)")
            if problem is None:
                problem = _columns_problem(rec)
            if problem is None and anchor is not None and rec.seq == anchor.seq and rec.record_hash != anchor.hash:
                problem = "record_hash differs from the anchored head (the chain was rewritten up to here)"
            if problem is not None:
                return bad(rec.seq, problem)
            count += 1
            prev = rec.record_hash
            expected_seq += 1
        if anchor is not None and anchor.seq >= expected_seq:
            return bad(expected_seq, f"the log ends at seq {expected_seq - 1} but the anchor names seq {anchor.seq}: "
                                     "records were removed from the end")
        return VerifyReport(ok=True, records=count, head_hash=prev, head_seq=expected_seq - 1)

    def export(self, out: Path, since: datetime | None = None, until: datetime | None = None,
               user: str | None = None, fmt: ExportFormat = "jsonl") -> int:
        """Write the selected records and a trailer with the chain head to ``out``; returns the record count."""
        if fmt not in ("jsonl", "csv"):
            raise ConfigurationError(f"audit export format must be jsonl or csv, not {fmt!r}")
        head = self.head()  # Records appended while exporting lie beyond this head and are left out.
        return write_export(Path(out), fmt, head, self.records(since=since, until=until, user=user, max_seq=head.seq),
                            since=since, until=until, user=user)
