"""AuditLog: the tamper-evident record of every search and answer, written before the response leaves.

Place in the flow: ``rag.service`` calls :meth:`AuditLog.append` once per request (search, ask or
chat), after retrieval and generation and before the response is returned; the CLI and compliance
reviewers call :meth:`AuditLog.verify` and :meth:`AuditLog.export`, and :func:`verify_export`
checks an export on its own, away from the database.

Design
------
*Storage.* One row per record in ``audit_records``: indexed columns ``seq``, ``ts``, ``user_id`` and
``kind`` for querying, ``prev_hash`` and ``record_hash``, and ``content``: the whole record as one
canonical JSON text (RFC 8785, JSON Canonicalization Scheme, through the ``rfc8785`` package). The
content includes ``seq`` and ``prev_hash`` themselves, so the hash has one unambiguous input:

    record_hash = sha256(content_utf8),  content = JCS({"v": 1, "seq": n, "prev_hash": h(n-1), ...fields})

with ``h(0)`` = 64 zeros (:data:`GENESIS_HASH`). The indexed columns are copies for querying;
:meth:`AuditLog.verify` checks they agree with the content.

*Appends* are serialised so the chain never forks: on PostgreSQL with a transaction-level advisory
lock (``pg_advisory_xact_lock``), on SQLite with ``BEGIN IMMEDIATE`` (WAL, ``synchronous=FULL``).
A unique constraint on ``seq`` is the last line of defence. ``append`` returns after commit.

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

*Exports* (JSONL or CSV) hold the selected records, each with its ``seq``, ``prev_hash``,
``record_hash`` and full content, and end with a trailer: the filter used, the number of records,
first and last seq, a digest of the exported record hashes (sha256 over them joined by newlines),
and the chain head of the whole log at export time. :func:`verify_export` recomputes each record's
hash from its content, checks chaining wherever consecutive seqs are both exported (and genesis
for seq 1), allows gaps only when the trailer declares a filter and checks every record matches
that filter, checks count, first/last seq and digest, and, when the last exported record is the
head, that its hash equals the trailer's head hash. An unfiltered export is therefore the whole
chain from genesis to head. In CSV the readable columns (one per top-level field; lists and
objects as JSON; text that a spreadsheet would run as a formula is prefixed with ``'``) are
checked against the ``canonical_json`` column, and the trailer is a last row with ``seq`` =
``trailer``.

Records hold the *redacted* question only; the answer is generated from redacted chunks. Error
messages here name seqs and fields, never record text.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import rfc8785
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    select,
    text,
    type_coerce,
)
from sqlalchemy.engine import make_url

from rag.errors import AuditIntegrityError, ConfigurationError

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "ChainHead",
    "Kind",
    "Outcome",
    "RetrievedChunkRecord",
    "StoredAuditRecord",
    "VerifyReport",
    "canonical_json",
    "text_sha256",
    "verify_export",
]

GENESIS_HASH = "0" * 64
RECORD_FORMAT_VERSION = 1
EXPORT_FORMAT = "enclave-audit-export/1"
VERSION_TABLE = "enclave_audit_version"
TABLE_NAME = "audit_records"
# pg_advisory_xact_lock key: the first 8 bytes of sha256("enclave.audit.append"), as a signed bigint.
_PG_APPEND_LOCK = int.from_bytes(hashlib.sha256(b"enclave.audit.append").digest()[:8], "big", signed=True)
_MIGRATIONS = Path(__file__).resolve().parent / "audit_migrations"
_SQLITE_BEGIN = "enclave_sqlite_begin"

Kind = Literal["search", "ask", "chat"]
Outcome = Literal["ok", "no_results", "invalid_answer", "error", "timeout"]
ExportFormat = Literal["jsonl", "csv"]
SamplingValue = str | int | float | bool | None

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


def text_sha256(value: str) -> str:
    """Hex sha256 of a text's UTF-8 bytes (answer hashes; question hashes of redacted text)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def canonical_json(value: Any) -> str:
    """RFC 8785 canonical JSON text: the one serialisation that record hashes are computed over."""
    return rfc8785.dumps(value).decode("utf-8")


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware")
    return value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _check_finite(value: float, what: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number")


@dataclass(frozen=True)
class RetrievedChunkRecord:
    """One chunk retrieval returned: which chunk, which document version, and whether the model saw it."""

    chunk_id: int
    document_id: int
    document_version: int
    content_hash: str
    score: float
    shown_to_model: bool

    def __post_init__(self) -> None:
        _check_finite(self.score, "chunk score")

    def to_json(self) -> dict[str, Any]:
        return {"chunk_id": self.chunk_id, "document_id": self.document_id,
                "document_version": self.document_version, "content_hash": self.content_hash,
                "score": self.score, "shown_to_model": self.shown_to_model}


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    """What one request did, as the service hands it to :meth:`AuditLog.append`.

    ``question_redacted`` is the question after redaction; ``question_hash`` is computed by the
    caller (a keyed hash if it is over the unredacted text). ``answer_hash`` is filled in from
    ``answer`` when left empty. ``llm_model`` is the model name, or what the server reported.
    """

    request_id: str
    kind: Kind
    user: str
    question_redacted: str
    question_hash: str
    outcome: Outcome
    latency_ms: float
    groups: tuple[str, ...] = ()
    purpose: str | None = None
    chunks: tuple[RetrievedChunkRecord, ...] = ()
    policy_name: str = ""
    policy_hash: str = ""
    index_version: str = ""
    embedding_model: str = ""
    embedding_model_hash: str = ""
    llm_backend: str | None = None
    llm_model: str | None = None
    llm_weights_hash: str | None = None
    sampling: Mapping[str, SamplingValue] = field(default_factory=dict)
    prompt_template_version: str | None = None
    answer: str | None = None
    answer_hash: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_type: str | None = None
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.kind not in get_args(Kind):
            raise ValueError(f"audit kind must be one of {get_args(Kind)}, not {self.kind!r}")
        if self.outcome not in get_args(Outcome):
            raise ValueError(f"audit outcome must be one of {get_args(Outcome)}, not {self.outcome!r}")
        _check_finite(self.latency_ms, "latency_ms")
        for key, value in self.sampling.items():
            if isinstance(value, float):
                _check_finite(value, f"sampling parameter {key}")
        object.__setattr__(self, "ts", _utc(self.ts, "audit entry time"))
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "chunks", tuple(self.chunks))
        object.__setattr__(self, "sampling", dict(self.sampling))
        if self.answer is not None:
            computed = text_sha256(self.answer)
            if self.answer_hash is None:
                object.__setattr__(self, "answer_hash", computed)
            elif self.answer_hash != computed:
                raise ValueError(f"answer_hash does not match the answer of request {self.request_id}")

    def to_json(self) -> dict[str, Any]:
        """The entry's fields as a JSON object (the record content less seq, prev_hash and v)."""
        return {
            "ts": _iso(self.ts),
            "request_id": self.request_id,
            "kind": self.kind,
            "user": self.user,
            "groups": list(self.groups),
            "purpose": self.purpose,
            "question_redacted": self.question_redacted,
            "question_hash": self.question_hash,
            "chunks": [c.to_json() for c in self.chunks],
            "policy_name": self.policy_name,
            "policy_hash": self.policy_hash,
            "index_version": self.index_version,
            "embedding_model": self.embedding_model,
            "embedding_model_hash": self.embedding_model_hash,
            "llm_backend": self.llm_backend,
            "llm_model": self.llm_model,
            "llm_weights_hash": self.llm_weights_hash,
            "sampling": dict(self.sampling),
            "prompt_template_version": self.prompt_template_version,
            "answer": self.answer,
            "answer_hash": self.answer_hash,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms": self.latency_ms,
            "outcome": self.outcome,
            "error_type": self.error_type,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> AuditEntry:
        """Rebuild an entry from record content (as stored or exported)."""
        return cls(
            ts=_parse_iso(body["ts"]), request_id=body["request_id"], kind=body["kind"], user=body["user"],
            groups=tuple(body["groups"]), purpose=body["purpose"], question_redacted=body["question_redacted"],
            question_hash=body["question_hash"],
            chunks=tuple(RetrievedChunkRecord(**c) for c in body["chunks"]),
            policy_name=body["policy_name"], policy_hash=body["policy_hash"], index_version=body["index_version"],
            embedding_model=body["embedding_model"], embedding_model_hash=body["embedding_model_hash"],
            llm_backend=body["llm_backend"], llm_model=body["llm_model"], llm_weights_hash=body["llm_weights_hash"],
            sampling=body["sampling"], prompt_template_version=body["prompt_template_version"],
            answer=body["answer"], answer_hash=body["answer_hash"], prompt_tokens=body["prompt_tokens"],
            completion_tokens=body["completion_tokens"], latency_ms=body["latency_ms"], outcome=body["outcome"],
            error_type=body["error_type"],
        )


# Top-level keys of a record's content, in export column order.
RECORD_FIELDS: tuple[str, ...] = ("v", "seq", "prev_hash", *AuditEntry(
    request_id="", kind="search", user="", question_redacted="", question_hash="", outcome="ok", latency_ms=0.0,
).to_json().keys())


@dataclass(frozen=True)
class AuditRecord:
    """What :meth:`AuditLog.append` returns once the record is committed."""

    seq: int
    record_hash: str
    id: int


@dataclass(frozen=True)
class ChainHead:
    """The newest record of the chain: keep it out of reach of the database's writers to anchor it."""

    seq: int
    hash: str


@dataclass(frozen=True)
class StoredAuditRecord:
    """One row as stored: the indexed columns, the hashes and the canonical content text."""

    id: int
    seq: int
    ts: datetime | None  # None when the stored value is not a timestamp (verify reports it)
    user: str
    kind: str
    prev_hash: str
    record_hash: str
    content: str

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.content)
        return parsed

    def entry(self) -> AuditEntry:
        return AuditEntry.from_json(self.body)


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of a verification.

    ``records`` counts the records that verified before the first bad one (all of them when ok);
    ``head_seq`` and ``head_hash`` name the last record that verified (for an export: the trailer's
    chain head).
    """

    ok: bool
    records: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None
    head_seq: int = 0

    def raise_for_problem(self) -> None:
        if not self.ok:
            raise AuditIntegrityError(
                f"audit chain broken at seq {self.first_bad_seq}: {self.problem}; "
                "treat the log as tampered with from that record on and compare with an anchored head or export")


def _build_content(entry: AuditEntry, seq: int, prev_hash: str) -> str:
    return canonical_json({"v": RECORD_FORMAT_VERSION, "seq": seq, "prev_hash": prev_hash, **entry.to_json()})


def _record_problem(seq: int, prev_hash: str, record_hash: str, content: str) -> str | None:
    """Why one record's content does not support its seq, prev_hash and record_hash, or None."""
    try:
        body = json.loads(content)
    except ValueError:
        return "content is not valid JSON"
    if not isinstance(body, dict):
        return "content is not a JSON object"
    try:
        canonical = canonical_json(body)
    except rfc8785.CanonicalizationError:
        return "content cannot be canonicalised"
    if canonical != content:
        return "content is not in canonical JSON form"
    if hashlib.sha256(content.encode("utf-8")).hexdigest() != record_hash:
        return "record_hash does not match the content (the record was edited)"
    if body.get("seq") != seq:
        return f"content says seq {body.get('seq')!r} but it is stored as seq {seq} (records moved)"
    if body.get("prev_hash") != prev_hash:
        return "prev_hash column differs from the prev_hash in the content"
    missing = set(RECORD_FIELDS) - body.keys()
    if missing:
        return f"content lacks fields {sorted(missing)}"
    return None


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
        ts = _parse_iso(body["ts"])
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


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the driver so BEGIN is ours (SQLAlchemy's pysqlite recipe).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Appends take the write lock at BEGIN, so two writers never read the same head.
        mode = conn.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class AuditLog:
    """The append-only, hash-chained audit log in a SQLite or PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.url = url
        backend = make_url(url).get_backend_name()
        if backend == "sqlite":
            self.engine = _sqlite_engine(url)
        elif backend == "postgresql":
            self.engine = create_engine(url, pool_pre_ping=True)
        else:
            raise ConfigurationError(f"audit log needs a sqlite or postgresql URL, not a {backend} one")
        self.backend = backend

    def dispose(self) -> None:
        self.engine.dispose()

    def _write(self) -> Any:
        if self.backend == "sqlite":
            return self.engine.connect().execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
        return self.engine.connect()

    def migrate(self, app_role: str | None = None) -> None:
        """Bring the audit schema to the newest revision (Alembic version table ``enclave_audit_version``).

        On PostgreSQL, ``app_role`` (the role the service connects as) gets SELECT and INSERT on the
        audit table and loses UPDATE, DELETE and TRUNCATE, as PUBLIC does. Ignored on SQLite.
        """
        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with self._write() as conn, conn.begin():
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            if app_role and self.backend == "postgresql":
                role = conn.dialect.identifier_preparer.quote(app_role)
                conn.execute(text(f"REVOKE UPDATE, DELETE, TRUNCATE ON {TABLE_NAME} FROM PUBLIC, {role}"))
                conn.execute(text(f"REVOKE ALL ON {VERSION_TABLE} FROM {role}"))
                conn.execute(text(f"GRANT SELECT, INSERT ON {TABLE_NAME} TO {role}"))
                schema = conn.dialect.identifier_preparer.quote(
                    conn.execute(text("SELECT current_schema()")).scalar_one())
                conn.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {role}"))
                sequence = conn.execute(text(f"SELECT pg_get_serial_sequence('{TABLE_NAME}', 'id')")).scalar_one()
                conn.execute(text(f"GRANT USAGE, SELECT ON SEQUENCE {sequence} TO {role}"))

    def append(self, entry: AuditEntry) -> AuditRecord:
        """Chain one record onto the head and commit it; durable when this returns."""
        with self._write() as conn, conn.begin():
            if self.backend == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_APPEND_LOCK})
            head = conn.execute(select(audit_records.c.seq, audit_records.c.record_hash)
                                .order_by(audit_records.c.seq.desc()).limit(1)).first()
            seq, prev_hash = (1, GENESIS_HASH) if head is None else (head.seq + 1, head.record_hash)
            content = _build_content(entry, seq, prev_hash)
            record_hash = hashlib.sha256(content.encode("utf-8")).hexdigest()
            row_id = conn.execute(audit_records.insert().values(
                seq=seq, ts=entry.ts, user_id=entry.user, kind=entry.kind, prev_hash=prev_hash,
                record_hash=record_hash, content=content).returning(audit_records.c.id)).scalar_one()
        return AuditRecord(seq=seq, record_hash=record_hash, id=row_id)

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
            query = query.where(audit_records.c.ts >= _utc(since, "since"))
        if until is not None:
            query = query.where(audit_records.c.ts < _utc(until, "until"))
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
            problem = _record_problem(rec.seq, rec.prev_hash, rec.record_hash, rec.content)
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
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial")
        hashes: list[str] = []
        try:
            self._write_export(tmp, fmt, head, since, until, user, hashes)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, out)
        return len(hashes)

    def _write_export(self, tmp: Path, fmt: ExportFormat, head: ChainHead, since: datetime | None,
                      until: datetime | None, user: str | None, hashes: list[str]) -> None:
        first_seq: int | None = None
        last_seq: int | None = None
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh) if fmt == "csv" else None
            if writer is not None:
                writer.writerow(_CSV_COLUMNS)
            for rec in self.records(since=since, until=until, user=user, max_seq=head.seq):
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
                "type": "trailer", "format": EXPORT_FORMAT, "exported_at": _iso(datetime.now(UTC)),
                "filter": {"since": _iso(since) if since else None, "until": _iso(until) if until else None,
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


# --- exports --------------------------------------------------------------------------------------

_CSV_COLUMNS: tuple[str, ...] = ("seq", "prev_hash", "record_hash",
                                 *(f for f in RECORD_FIELDS if f not in ("seq", "prev_hash")), "canonical_json")
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


def _csv_row(seq: int, prev_hash: str, record_hash: str, content: str) -> list[str]:
    body = json.loads(content)
    return [str(seq), prev_hash, record_hash, *(_csv_cell(body.get(f)) for f in _CSV_COLUMNS[3:-1]), content]


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
        if header is None or tuple(header) != _CSV_COLUMNS:
            raise _ExportUnreadable("the CSV header is not that of an Enclave audit export")
        for row_no, row in enumerate(reader, start=2):
            if trailer is not None:
                raise _ExportUnreadable(f"row {row_no} follows the trailer")
            if len(row) != len(_CSV_COLUMNS):
                raise _ExportUnreadable(f"row {row_no} has {len(row)} columns, not {len(_CSV_COLUMNS)}")
            try:
                if row[0] == "trailer":
                    trailer = json.loads(row[-1])
                    continue
                rec = _ExportedRecord(int(row[0]), row[1], row[2], row[-1])
                expected = _csv_row(rec.seq, rec.prev_hash, rec.record_hash, rec.content)
            except (ValueError, AttributeError) as exc:
                raise _ExportUnreadable(f"row {row_no} is not a valid export row ({type(exc).__name__})") from exc
            if row != expected:
                column = next(c for c, got, want in zip(_CSV_COLUMNS, row, expected, strict=True) if got != want)
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
        since = _parse_iso(filt["since"]) if filt.get("since") else None
        until = _parse_iso(filt["until"]) if filt.get("until") else None
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
        problem = _record_problem(rec.seq, rec.prev_hash, rec.record_hash, rec.content)
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
            ts = _parse_iso(body["ts"])
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
