"""CatalogStore: the ingestion state of record, over SQLite or PostgreSQL (same code, same schema).

Every write that changes what a document contributes (its chunks, its version, its deletion)
happens in one transaction, so a run killed at any point leaves the catalog either before or
after that document, never half-way. The vector index is derived from this state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from rag.catalog.models import Chunk, Document, IngestionRun, QuarantineRecord, Source, utcnow
from rag.database import make_engine, upgrade_schema
from rag.errors import IndexIntegrityError
from rag.lifecycle.models import SubjectChunk, VaultEntry

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# built once: an expanding IN list keeps one compiled form in SQLAlchemy's cache for any number of ids
_CHUNK_VIEWS = (select(Chunk.id, Chunk.document_id, Chunk.document_version, Document.uri, Chunk.text,
                       Chunk.content_hash, Chunk.access, Chunk.policy_name, Chunk.policy_hash)
                .join(Document, Document.id == Chunk.document_id)
                .where(Chunk.id.in_(bindparam("ids", expanding=True))))


@dataclass(frozen=True)
class KnownDocument:
    id: int
    uri: str
    sha256: str
    policy_hash: str
    pipeline_version: str
    version: int
    access: dict[str, Any]


@dataclass(frozen=True)
class KnownQuarantine:
    uri: str
    sha256: str
    pipeline_version: str
    reason: str = ""


@dataclass(frozen=True)
class NewChunk:
    """A redacted chunk ready to store."""

    ordinal: int
    text: str
    content_hash: str
    page: int | None
    entity_counts: dict[str, int]
    # True when the redacting worker's last detection pass over exactly this text found nothing;
    # the no_residual_pii check then re-scans only a sample of such chunks.
    pii_checked: bool = False
    # (entity type, keyed subject key) of each value redaction removed (rag.lifecycle.subjects)
    subjects: tuple[tuple[str, str], ...] = ()
    # (token, entity type, subject key, AES-GCM ciphertext) of each pseudonymised value (rag.lifecycle.vault)
    pseudonyms: tuple[tuple[str, str, str, bytes], ...] = ()


@dataclass(frozen=True)
class ChunkView:
    """What retrieval and audit need of a chunk."""

    id: int
    document_id: int
    document_version: int
    source_uri: str
    text: str
    content_hash: str
    access: dict[str, Any]
    policy_name: str
    policy_hash: str


@dataclass(frozen=True)
class CatalogCounts:
    documents: int
    chunks: int
    embedded_chunks: int
    quarantined: int
    quarantine_by_reason: dict[str, int]
    entities_removed: dict[str, int]


class CatalogStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        with self.engine.begin() as conn:
            upgrade_schema(conn, _MIGRATIONS, self.url)

    def dispose(self) -> None:
        self.engine.dispose()

    # --- sources and runs ---------------------------------------------------------------------

    def ensure_source(self, name: str, kind: str, location: str) -> int:
        with self.session() as s, s.begin():
            src = s.scalar(select(Source).where(Source.name == name))
            if src is None:
                src = Source(name=name, kind=kind, location=location)
                s.add(src)
                s.flush()
            return src.id

    def source_id(self, name: str) -> int | None:
        with self.session() as s:
            return s.scalar(select(Source.id).where(Source.name == name))

    def start_run(self, source_id: int, policy_name: str, policy_hash: str, dagster_run_id: str | None, *,
                  manifest: dict[str, Any] | None = None, counts: dict[str, Any] | None = None) -> int:
        """Record a run and what it set out to do (``manifest``: uris, hashes, access rules; never text)."""
        with self.session() as s, s.begin():
            run = IngestionRun(source_id=source_id, policy_name=policy_name, policy_hash=policy_hash,
                               dagster_run_id=dagster_run_id, counts=counts or {}, manifest=manifest or {})
            s.add(run)
            s.flush()
            return run.id

    def update_run(self, run_id: int, counts: dict[str, Any], manifest: dict[str, Any] | None = None) -> None:
        """Merge one step's counts into the run's; ``manifest`` replaces what the run set out to do."""
        with self.session() as s, s.begin():
            run = s.get(IngestionRun, run_id)
            if run is not None:
                run.counts = {**(run.counts or {}), **counts}
                if manifest is not None:
                    run.manifest = manifest

    def finish_run(self, run_id: int, status: str, failure: str | None = None) -> None:
        """Record how a run ended and how long it took. A later verdict replaces an earlier one:
        a run its last asset completed still fails if a check after it fails."""
        with self.session() as s, s.begin():
            run = s.get(IngestionRun, run_id)
            if run is None:
                return
            finished = utcnow()
            started = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=finished.tzinfo)
            run.status, run.failure, run.finished_at = status, failure, finished
            run.seconds = round((finished - started).total_seconds(), 3)

    def run(self, run_id: int) -> IngestionRun | None:
        with self.session() as s:
            return s.get(IngestionRun, run_id)

    def run_for_dagster(self, dagster_run_id: str) -> IngestionRun | None:
        with self.session() as s:
            return s.scalar(select(IngestionRun).where(IngestionRun.dagster_run_id == dagster_run_id)
                            .order_by(IngestionRun.id.desc()).limit(1))

    def latest_run(self) -> IngestionRun | None:
        with self.session() as s:
            return s.scalar(select(IngestionRun).order_by(IngestionRun.id.desc()).limit(1))

    # --- documents ------------------------------------------------------------------------------

    def known_documents(self, source_id: int) -> dict[str, KnownDocument]:
        with self.session() as s:
            rows = s.execute(select(Document.id, Document.uri, Document.sha256, Document.policy_hash,
                                    Document.pipeline_version, Document.version, Document.access)
                             .where(Document.source_id == source_id))
            return {r.uri: KnownDocument(r.id, r.uri, r.sha256, r.policy_hash, r.pipeline_version, r.version,
                                         r.access) for r in rows}

    def update_access(self, document_id: int, access: dict[str, Any]) -> None:
        """A changed access rule applies at once to a document's chunks, without re-processing them."""
        with self.session() as s, s.begin():
            s.execute(update(Document).where(Document.id == document_id).values(access=access, updated_at=utcnow()))
            s.execute(update(Chunk).where(Chunk.document_id == document_id).values(access=access))

    def known_quarantine(self, source_id: int) -> dict[str, KnownQuarantine]:
        with self.session() as s:
            rows = s.execute(select(QuarantineRecord.uri, QuarantineRecord.sha256, QuarantineRecord.pipeline_version,
                                    QuarantineRecord.reason).where(QuarantineRecord.source_id == source_id))
            return {r.uri: KnownQuarantine(r.uri, r.sha256, r.pipeline_version, r.reason) for r in rows}

    def store_document(self, *, source_id: int, uri: str, sha256: str, size: int, access: dict[str, Any],
                       policy_name: str, policy_hash: str, pipeline_version: str,
                       chunks: Sequence[NewChunk]) -> tuple[int, int]:
        """Replace a document's chunks in one transaction. Returns (document id, version)."""
        counts: dict[str, int] = {}
        for c in chunks:
            for k, v in c.entity_counts.items():
                counts[k] = counts.get(k, 0) + v
        with self.session() as s, s.begin():
            doc = s.scalar(select(Document).where(Document.source_id == source_id, Document.uri == uri))
            if doc is None:
                doc = Document(source_id=source_id, uri=uri, version=1)
                s.add(doc)
            else:
                s.execute(delete(Chunk).where(Chunk.document_id == doc.id))
                doc.version += 1
            doc.sha256, doc.size, doc.access = sha256, size, access
            doc.policy_name, doc.policy_hash, doc.pipeline_version = policy_name, policy_hash, pipeline_version
            doc.entity_counts, doc.updated_at = counts, utcnow()
            s.flush()
            rows = [Chunk(document_id=doc.id, document_version=doc.version, ordinal=c.ordinal, text=c.text,
                          content_hash=c.content_hash, page=c.page, access=access,
                          policy_name=policy_name, policy_hash=policy_hash, entity_counts=c.entity_counts,
                          pii_checked=c.pii_checked)
                    for c in chunks]
            s.add_all(rows)
            if any(c.subjects for c in chunks):
                s.flush()  # chunk ids for the subject index
                s.add_all(SubjectChunk(chunk_id=row.id, entity_type=entity, subject_key=key)
                          for row, c in zip(rows, chunks, strict=True) for entity, key in c.subjects)
            vault = {p[0]: p for c in chunks for p in c.pseudonyms}
            if vault:  # a token already in the vault keeps its entry (same value, same token)
                known = set(s.scalars(select(VaultEntry.token).where(VaultEntry.token.in_(list(vault)))))
                s.add_all(VaultEntry(token=t, entity_type=e, subject_key=k, ciphertext=ct)
                          for t, e, k, ct in vault.values() if t not in known)
            s.execute(delete(QuarantineRecord).where(QuarantineRecord.source_id == source_id,
                                                     QuarantineRecord.uri == uri))
            return doc.id, doc.version

    def quarantine(self, *, source_id: int, uri: str, sha256: str, size: int, reason: str, detail: str,
                   pipeline_version: str, run_id: int | None) -> None:
        """Record why a file was not ingested. What was stored for it before stays (nothing is lost)."""
        with self.session() as s, s.begin():
            row = s.scalar(select(QuarantineRecord).where(QuarantineRecord.source_id == source_id,
                                                          QuarantineRecord.uri == uri))
            if row is None:
                row = QuarantineRecord(source_id=source_id, uri=uri)
                s.add(row)
            row.sha256, row.size, row.reason, row.detail = sha256, size, reason, detail
            row.pipeline_version, row.run_id, row.created_at = pipeline_version, run_id, utcnow()

    def delete_documents(self, source_id: int, uris: Iterable[str]) -> int:
        """Forget documents gone from the source: their chunks go; the index follows on reconcile."""
        uris = list(uris)
        removed = 0
        with self.session() as s, s.begin():
            for start in range(0, len(uris), 500):
                batch = uris[start:start + 500]
                ids = list(s.scalars(select(Document.id).where(Document.source_id == source_id,
                                                                Document.uri.in_(batch))))
                if ids:
                    s.execute(delete(Chunk).where(Chunk.document_id.in_(ids)))
                    s.execute(delete(Document).where(Document.id.in_(ids)))
                    removed += len(ids)
                s.execute(delete(QuarantineRecord).where(QuarantineRecord.source_id == source_id,
                                                         QuarantineRecord.uri.in_(batch)))
        return removed

    def delete_chunks(self, ids: Sequence[int]) -> int:
        """Remove single chunks (a subject's erasure); their documents keep their other chunks."""
        removed = 0
        with self.session() as s, s.begin():
            for start in range(0, len(ids), 500):
                result = s.execute(delete(Chunk).where(Chunk.id.in_([int(x) for x in ids[start:start + 500]])))
                removed += int(getattr(result, "rowcount", 0) or 0)
        return removed

    def compact(self) -> None:
        """Rewrite the database files so deleted rows leave no bytes behind (erasure).

        SQLite: ``VACUUM`` rebuilds the file without free pages, then a truncating WAL checkpoint
        empties the write-ahead log that still held the old pages. PostgreSQL: ``VACUUM FULL``
        rewrites the tables that held text or keys (the server's own WAL and backups are the
        operator's to rotate). Both need no open transaction.
        """
        backend = self.engine.dialect.name
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            if backend == "sqlite":
                raw.execute("VACUUM")
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            elif backend == "postgresql":
                raw.autocommit = True  # psycopg's connection: VACUUM refuses to run in a transaction
                try:
                    cur = raw.cursor()
                    cur.execute("VACUUM FULL chunks, documents, quarantine, lifecycle_subjects, lifecycle_vault")
                    cur.close()
                finally:
                    raw.autocommit = False
            conn.invalidate()  # never hand this connection back to the pool in a changed mode

    # --- chunks and embeddings --------------------------------------------------------------------

    def chunks_needing_embedding(self, model_id: str, limit: int) -> list[tuple[int, str]]:
        with self.session() as s:
            rows = s.execute(select(Chunk.id, Chunk.text)
                             .where((Chunk.embedding.is_(None)) | (Chunk.embedding_model != model_id))
                             .order_by(Chunk.id).limit(limit))
            return [(r.id, r.text) for r in rows]

    def count_chunks_needing_embedding(self, model_id: str) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Chunk)
                            .where((Chunk.embedding.is_(None)) | (Chunk.embedding_model != model_id))) or 0

    def set_embeddings(self, model_id: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        with self.session() as s, s.begin():
            for cid, vec in zip(ids, vectors, strict=True):
                s.execute(update(Chunk).where(Chunk.id == cid)
                          .values(embedding=np.asarray(vec, dtype=np.float32).tobytes(), embedding_model=model_id))

    def embedded_chunk_ids(self, model_id: str) -> np.ndarray:
        with self.session() as s:
            ids = s.scalars(select(Chunk.id).where(Chunk.embedding_model == model_id,
                                                   Chunk.embedding.is_not(None)).order_by(Chunk.id))
            return np.fromiter(ids, dtype=np.int64)

    def live_chunk_ids(self) -> np.ndarray:
        with self.session() as s:
            return np.fromiter(s.scalars(select(Chunk.id).order_by(Chunk.id)), dtype=np.int64)

    def embeddings_for(self, ids: Sequence[int] | np.ndarray, dim: int) -> np.ndarray:
        out = np.empty((len(ids), dim), dtype=np.float32)
        pos = {int(cid): i for i, cid in enumerate(ids)}
        with self.session() as s:
            for start in range(0, len(ids), 900):
                batch = [int(x) for x in ids[start:start + 900]]
                for cid, blob in s.execute(select(Chunk.id, Chunk.embedding).where(Chunk.id.in_(batch))):
                    if blob is None:  # asked for by id after embedded_chunk_ids: re-embedded meanwhile
                        raise IndexIntegrityError(f"chunk {cid} lost its embedding while the index was synced; "
                                                  "run ingestion again")
                    out[pos[cid]] = np.frombuffer(blob, dtype=np.float32)
        return out

    def chunks_unchecked_with_policy(self, limit: int) -> list[tuple[int, str, str]]:
        with self.session() as s:
            rows = s.execute(select(Chunk.id, Chunk.text, Chunk.policy_name).where(Chunk.pii_checked.is_(False))
                             .order_by(Chunk.id).limit(limit))
            return [(r.id, r.text, r.policy_name) for r in rows]

    def mark_checked(self, ids: Sequence[int]) -> None:
        with self.session() as s, s.begin():
            for start in range(0, len(ids), 900):
                s.execute(update(Chunk).where(Chunk.id.in_(list(ids[start:start + 900]))).values(pii_checked=True))

    def chunk_views(self, ids: Sequence[int]) -> dict[int, ChunkView]:
        """What a search shows of these chunks (every search's catalog read: a plain connection, no
        ORM session, whose set-up cost more than the query on a few ids)."""
        out: dict[int, ChunkView] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 900):
                batch = [int(x) for x in ids[start:start + 900]]
                for r in conn.execute(_CHUNK_VIEWS, {"ids": batch}):
                    out[r.id] = ChunkView(r.id, r.document_id, r.document_version, r.uri, r.text,
                                          r.content_hash, r.access, r.policy_name, r.policy_hash)
        return out

    def access_epoch(self) -> tuple[Any, ...]:
        """Changes whenever a document is added, replaced, re-tagged or deleted (cheap to ask per query)."""
        with self.session() as s:
            row = s.execute(select(func.count(Document.id), func.max(Document.updated_at), func.max(Document.id),
                                   func.sum(Document.version))).one()
            return tuple(row)

    def chunk_access(self) -> dict[int, dict[str, Any]]:
        with self.session() as s:
            return {r.id: r.access for r in s.execute(select(Chunk.id, Chunk.access))}

    # --- reporting --------------------------------------------------------------------------------

    def counts(self) -> CatalogCounts:
        with self.session() as s:
            docs = s.scalar(select(func.count()).select_from(Document)) or 0
            chunks = s.scalar(select(func.count()).select_from(Chunk)) or 0
            embedded = s.scalar(select(func.count()).select_from(Chunk).where(Chunk.embedding.is_not(None))) or 0
            q_rows = s.execute(select(QuarantineRecord.reason, func.count()).group_by(QuarantineRecord.reason)).all()
            entities: dict[str, int] = {}
            for (ec,) in s.execute(select(Document.entity_counts)):
                for k, v in (ec or {}).items():
                    entities[k] = entities.get(k, 0) + int(v)
        by_reason = {r: int(n) for r, n in q_rows}
        return CatalogCounts(docs, chunks, embedded, sum(by_reason.values()), by_reason, dict(sorted(entities.items())))

    def quarantine_list(self) -> list[QuarantineRecord]:
        with self.session() as s:
            return list(s.scalars(select(QuarantineRecord).order_by(QuarantineRecord.uri)))
