"""Erasure (GDPR Art. 17): remove a document, or every chunk that held one data subject, from every
store, prove it with probes, and seal a receipt into the audit chain.

Order of work, for ``enclave erase --document URI`` and ``--subject VALUE``:

1. Resolve what to erase (documents by uri; a subject's chunks by its keyed subject key, by its
   keyed placeholder token and by its value in clear, should detection have missed it once) and
   refuse, erasing nothing, when any of it is under legal hold.
2. Count per store (catalog rows, embeddings, vectors, BM25 postings, subject index, vault) and
   keep, in memory only, the probe needles: distinctive windows of the chunk text, the first
   bytes of each embedding, the subject's value and tokens.
3. Delete catalog rows (chunks cascade to the subject index), destroy the subject's vault entries,
   then rewrite: ``VACUUM`` and a truncating WAL checkpoint on SQLite (``VACUUM FULL`` on
   PostgreSQL), a compacted FAISS generation (rebuilt, no tombstones), a rebuilt BM25 generation;
   generation directories older than the one in force (superseded, or copied aside) are
   overwritten and removed.
4. Probe: every byte under ENCLAVE_HOME and the SQLite databases (or every row of a PostgreSQL
   catalog), and searches by the erased text and vectors. Count again.
5. Seal the receipt (:mod:`rag.lifecycle.receipts`); ``complete`` is true only when every probe
   came back clean.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.engine import make_url

from rag.audit import AuditLog, Kind
from rag.audit.records import iso
from rag.catalog.models import Chunk, Document, Source
from rag.catalog.store import CatalogStore
from rag.errors import EnclaveError, QuarantineReason
from rag.generations import GenerationDirectory
from rag.lifecycle.holds import HoldRegistry
from rag.lifecycle.models import SubjectChunk, VaultEntry
from rag.lifecycle.probes import ByteScan, distinctive_windows, scan_bytes, scan_postgres
from rag.lifecycle.receipts import RECEIPT_FORMAT, seal
from rag.lifecycle.subjects import normalise, placeholder_token, subject_key

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.index import FaissIndex
    from rag.lexical import Bm25Index

_VECTOR_PREFIX_BYTES = 32


class NothingToEraseError(EnclaveError):
    """The erasure request matched nothing in the catalog."""


@dataclass
class LifecycleStores:
    """What erasure acts on, built once from settings: catalog, audit log, index directory, tenant key."""

    catalog: CatalogStore
    audit: AuditLog
    home: Path
    index_dir: Path
    tenant_key: bytes
    exact_index_max: int = 100_000

    @classmethod
    def from_settings(cls, settings: Settings) -> LifecycleStores:
        catalog = CatalogStore(settings.database_url)
        catalog.migrate()
        audit = AuditLog(settings.audit_database_url)
        audit.migrate()
        return cls(catalog, audit, settings.home, settings.index_dir,
                   settings.tenant_key.get_secret_value().encode(), settings.exact_index_max)

    def close(self) -> None:
        self.catalog.dispose()
        self.audit.dispose()

    def holds(self) -> HoldRegistry:
        return HoldRegistry(self.catalog, self.audit)

    def vector_index(self) -> FaissIndex | None:
        """The FAISS index as saved, opened with the model its manifest names (no embedder needed)."""
        manifest = GenerationDirectory(self.index_dir / "vectors").manifest()
        if manifest is None:
            return None
        from rag.index import FaissIndex

        return FaissIndex(self.index_dir / "vectors", int(manifest["dim"]), str(manifest["model_id"]),
                          self.exact_index_max, device="cpu")

    def lexical(self) -> Bm25Index:
        from rag.lexical import Bm25Index

        return Bm25Index(self.index_dir / "bm25")

    def scan_roots(self) -> list[Path]:
        """ENCLAVE_HOME, and any SQLite database file kept outside it."""
        roots = [self.home]
        for url in (self.catalog.url, self.audit.url):
            parsed = make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
                path = Path(parsed.database).resolve()
                if not path.is_relative_to(self.home):
                    roots.append(path)
        return roots


# --- what an erasure targets ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The rows one erasure removes: whole documents, or single chunks of documents that stay."""

    document_ids: tuple[int, ...]
    chunk_ids: tuple[int, ...]
    documents: tuple[dict[str, Any], ...]  # id, source, uri, version: what the receipt names
    vault_tokens: tuple[str, ...] = ()
    # (source, uri, sha256, size) of each whole document erased: recorded so ingestion skips the
    # unchanged file instead of bringing it back
    files: tuple[tuple[str, str, str, int], ...] = ()


def document_target(catalog: CatalogStore, uri: str, source: str | None = None) -> Target:
    with catalog.session() as s:
        query = (select(Document.id, Document.uri, Document.version, Document.sha256, Document.size, Source.name)
                 .join(Source, Source.id == Document.source_id).where(Document.uri == uri))
        if source:
            query = query.where(Source.name == source)
        docs = s.execute(query.order_by(Document.id)).all()
        ids = tuple(int(d.id) for d in docs)
        chunks = tuple(int(c) for c in s.scalars(select(Chunk.id).where(Chunk.document_id.in_(ids)))) if ids else ()
    if not docs:
        where = f" in source {source!r}" if source else ""
        raise NothingToEraseError(f"no document {uri!r}{where} is in the catalog; `enclave status` lists sources")
    return Target(ids, chunks, tuple({"id": d.id, "source": d.name, "uri": d.uri, "version": d.version}
                                     for d in docs), files=tuple((d.name, d.uri, d.sha256, d.size) for d in docs))


def subject_target(catalog: CatalogStore, tenant_key: bytes, value: str, entity_type: str | None = None) -> Target:
    """Every chunk that held the subject: by the subject index, its keyed placeholder token, its vault
    pseudonyms, and its value in clear (a mention detection missed must go too)."""
    key = subject_key(tenant_key, value)
    token = placeholder_token(tenant_key, value)
    with catalog.session() as s:
        indexed = select(SubjectChunk.chunk_id).where(SubjectChunk.subject_key == key)
        vault = select(VaultEntry.token).where(VaultEntry.subject_key == key)
        if entity_type:
            indexed = indexed.where(SubjectChunk.entity_type == entity_type)
            vault = vault.where(VaultEntry.entity_type == entity_type)
        tokens = tuple(s.scalars(vault))
        placeholders = [Chunk.text.contains(f":{token}>", autoescape=True),
                        *(Chunk.text.contains(f"<{t}>", autoescape=True) for t in tokens)]
        ids = set(int(c) for c in s.scalars(indexed))
        ids.update(int(c) for c in s.scalars(select(Chunk.id).where(or_(*placeholders))))
        # the value in clear, as a whole word ("Ann" must not take every chunk that says "annual")
        word = re.compile(rf"(?<!\w){re.escape(normalise(value))}(?!\w)")
        clear = select(Chunk.id, Chunk.text).where(func.lower(Chunk.text).contains(normalise(value), autoescape=True))
        ids.update(int(r.id) for r in s.execute(clear) if word.search(" ".join(r.text.split()).casefold()))
        rows = s.execute(select(Document.id, Document.uri, Document.version, Source.name)
                         .join(Source, Source.id == Document.source_id).join(Chunk, Chunk.document_id == Document.id)
                         .where(Chunk.id.in_(sorted(ids))).distinct()).all() if ids else []
    return Target((), tuple(sorted(ids)), tuple({"id": d.id, "source": d.name, "uri": d.uri, "version": d.version}
                                               for d in sorted(rows, key=lambda r: r.id)), tokens)


# --- counting and probing ------------------------------------------------------------------------


def _store_counts(stores: LifecycleStores, target: Target, subject: str | None) -> dict[str, int]:
    chunk_ids = list(target.chunk_ids)
    with stores.catalog.session() as s:
        def count(query: Any) -> int:
            return int(s.scalar(query) or 0)

        counts = {
            "catalog_documents": count(select(func.count()).select_from(Document)
                                       .where(Document.id.in_(target.document_ids))) if target.document_ids else 0,
            "catalog_chunks": count(select(func.count()).select_from(Chunk).where(Chunk.id.in_(chunk_ids))),
            "catalog_embeddings": count(select(func.count()).select_from(Chunk)
                                        .where(Chunk.id.in_(chunk_ids), Chunk.embedding.is_not(None))),
            "subject_index_rows": count(select(func.count()).select_from(SubjectChunk).where(
                or_(SubjectChunk.chunk_id.in_(chunk_ids),
                    SubjectChunk.subject_key == (subject or "")))),
            "vault_entries": count(select(func.count()).select_from(VaultEntry).where(
                or_(VaultEntry.token.in_(target.vault_tokens), VaultEntry.subject_key == (subject or "")))),
        }
    index = stores.vector_index()
    counts["index_vectors"] = int(np.isin(index.ids(), chunk_ids).sum()) if index is not None else 0
    counts["bm25_postings"] = int(np.isin(stores.lexical().ids(), chunk_ids).sum())
    return counts


def _generation(directory: Path) -> str | None:
    manifest = GenerationDirectory(directory).manifest()
    return str(manifest["path"]) if manifest else None


def _generations(stores: LifecycleStores) -> dict[str, str | None]:
    return {"vectors": _generation(stores.index_dir / "vectors"), "bm25": _generation(stores.index_dir / "bm25")}


def _overwrite_and_remove(directory: Path) -> None:
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            size = path.stat().st_size
            with path.open("r+b") as fh:
                fh.write(b"\0" * size)
                fh.flush()
                os.fsync(fh.fileno())
    shutil.rmtree(directory)


def remove_stale_generations(index_dir: Path) -> int:
    """Overwrite and remove every generation older than the one in force (superseded, or copied aside).

    A directory numbered above the one in force may be an ingestion run's publish in progress, so it
    is left alone: the next publish under that number replaces it whole (GenerationDirectory.publish).
    """
    removed = 0
    for name in ("vectors", "bm25"):
        directory = index_dir / name
        if not directory.is_dir():
            continue
        in_force = _generation(directory)
        for gen in sorted(directory.glob("gen-*")):
            if gen.is_dir() and in_force is not None and gen.name < in_force:
                _overwrite_and_remove(gen)
                removed += 1
    return removed


@dataclass(frozen=True)
class Needles:
    """What the probes look for, in memory only: never written, never in the receipt."""

    texts: tuple[str, ...]
    raw: tuple[bytes, ...]
    erased_texts: tuple[str, ...]
    vectors: np.ndarray
    kinds: dict[str, int]


def _needles(stores: LifecycleStores, target: Target, subject_values: Sequence[str]) -> Needles:
    ids = list(target.chunk_ids)
    with stores.catalog.session() as s:
        rows = s.execute(select(Chunk.id, Chunk.text, Chunk.embedding).where(Chunk.id.in_(ids))).all()
    erased = set(ids)

    def remaining_contains(window: str) -> bool:
        with stores.catalog.session() as s:
            return s.scalar(select(Chunk.id).where(Chunk.text.contains(window, autoescape=True),
                                                   Chunk.id.not_in(erased)).limit(1)) is not None

    windows = distinctive_windows([r.text for r in rows], remaining_contains)
    blobs = [r.embedding for r in rows if r.embedding]
    vectors = (np.stack([np.frombuffer(b, dtype=np.float32) for b in blobs]) if blobs
               else np.zeros((0, 0), dtype=np.float32))
    texts = [*windows, *subject_values]
    raw = [w.encode("utf-8") for w in texts] + [b[:_VECTOR_PREFIX_BYTES] for b in blobs]
    kinds = {"text_windows": len(windows), "subject_forms": len(subject_values), "vector_prefixes": len(blobs)}
    return Needles(tuple(texts), tuple(raw), tuple(r.text for r in rows), vectors, kinds)


def _search_probe(stores: LifecycleStores, needles: Needles, erased: set[int]) -> dict[str, int]:
    """Searches by each erased chunk's text (BM25) and vector (FAISS): how many returned an erased id."""
    lexical = stores.lexical()
    bm25_hits = sum(1 for t in needles.erased_texts if any(i in erased for i, _ in lexical.search(t, 10)))
    vector_hits = 0
    index = stores.vector_index()
    if index is not None and len(needles.vectors) and needles.vectors.shape[1] == index.dim:
        _, ids = index.search(needles.vectors, 10)
        vector_hits = int(sum(1 for row in ids if any(int(i) in erased for i in row)))
    return {"bm25_queries": len(needles.erased_texts), "bm25_hits": bm25_hits,
            "vector_queries": len(needles.vectors), "vector_hits": vector_hits}


def probe(stores: LifecycleStores, needles: Needles, erased: set[int]) -> dict[str, Any]:
    files = scan_bytes(stores.scan_roots(), needles.raw)
    database: ByteScan = scan_postgres(stores.catalog, needles.texts)
    search = _search_probe(stores, needles, erased)
    clean = files.clean and database.clean and search["bm25_hits"] == 0 and search["vector_hits"] == 0
    return {"clean": clean, "needles": needles.kinds, "files": files.to_json(), "database": database.to_json(),
            "search": search}


# --- erasure ---------------------------------------------------------------------------------------


def _rewrite_stores(stores: LifecycleStores) -> dict[str, Any]:
    # generations not in force first (publishing would only unlink them), then the one superseded now
    stale = remove_stale_generations(stores.index_dir)
    stores.catalog.compact()
    index = stores.vector_index()
    vectors = 0
    if index is not None:
        desired = stores.catalog.embedded_chunk_ids(index.model_id)
        report = index.reconcile(desired, lambda ids: stores.catalog.embeddings_for(ids, index.dim), compact=True)
        vectors = report.total
        stores.lexical().sync(stores.catalog, desired)
    else:
        stores.lexical().sync(stores.catalog, np.zeros(0, dtype=np.int64))
    stale += remove_stale_generations(stores.index_dir)
    return {"index_vectors_total": vectors, "stale_generations_removed": stale}


def _delete_documents(stores: LifecycleStores, target: Target, detail: str) -> None:
    """Delete whole documents, leaving an ``erased`` quarantine record (uri, file digest) per document:
    the next ingestion run skips the unchanged file rather than ingest it again."""
    by_source: dict[str, list[str]] = {}
    for d in target.documents:
        by_source.setdefault(d["source"], []).append(d["uri"])
    for source, uris in by_source.items():
        source_id = stores.catalog.source_id(source)
        if source_id is not None:
            stores.catalog.delete_documents(source_id, uris)
    for source, uri, sha256, size in target.files:
        source_id = stores.catalog.source_id(source)
        if source_id is not None:
            stores.catalog.quarantine(source_id=source_id, uri=uri, sha256=sha256, size=size,
                                      reason=QuarantineReason.ERASED.value, detail=detail,
                                      pipeline_version="erased", run_id=None)


def erase_target(stores: LifecycleStores, target: Target, request: dict[str, Any], *, user: str, via: str,
                 subject: str | None = None, subject_values: Sequence[str] = (), kind: Kind = "erase",
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Erase ``target`` (refused, erasing nothing, if any of it is held), probe, and seal the receipt."""
    stores.holds().refuse_if_held((d["uri"], d["source"]) for d in target.documents)
    started = datetime.now(UTC)
    before = _store_counts(stores, target, subject)
    generations_before = _generations(stores)
    needles = _needles(stores, target, subject_values)
    if target.document_ids:
        _delete_documents(stores, target, f"erased by {user} ({request['what']})")
    else:
        stores.catalog.delete_chunks(target.chunk_ids)
    with stores.catalog.session() as s, s.begin():
        vault = select(VaultEntry).where(or_(VaultEntry.token.in_(target.vault_tokens),
                                             VaultEntry.subject_key == (subject or "")))
        for entry in s.scalars(vault):
            s.delete(entry)
    rewrite = _rewrite_stores(stores)
    probes = probe(stores, needles, set(target.chunk_ids))
    body = {
        "format": RECEIPT_FORMAT, "id": str(uuid.uuid4()), "requested": request, "by": user, "via": via,
        "started_at": iso(started), "finished_at": iso(datetime.now(UTC)),
        "documents": list(target.documents),
        "counts": {"before": before, "after": _store_counts(stores, target, subject)},
        "generations": {"before": generations_before, "after": _generations(stores)},
        "rewrite": rewrite, "probes": probes, "complete": bool(probes["clean"]), **(extra or {}),
    }
    summary = {"requested": request, "documents": len(target.documents), "chunks": len(target.chunk_ids),
               "complete": body["complete"]}
    return seal(stores.audit, body, kind=kind, user=user, via=via, summary=summary)


def erase_document(stores: LifecycleStores, uri: str, *, user: str, source: str | None = None,
                   via: str = "cli") -> dict[str, Any]:
    """Erase one document (by uri, in every source or in ``source``) from every store; returns its receipt."""
    target = document_target(stores.catalog, uri, source)
    return erase_target(stores, target, {"what": "document", "uri": uri, "source": source}, user=user, via=via)


def erase_subject(stores: LifecycleStores, value: str, *, user: str, entity_type: str | None = None,
                  via: str = "cli") -> dict[str, Any]:
    """Erase every chunk that held a data subject, and its vault entries; returns the receipt.

    The receipt names the entity type only: neither the value nor its keyed token is written anywhere.
    """
    if not value.strip():
        raise NothingToEraseError("--subject needs the value that identifies the data subject")
    key = subject_key(stores.tenant_key, value)
    target = subject_target(stores.catalog, stores.tenant_key, value, entity_type)
    forms = list(dict.fromkeys(f for f in (value, value.strip(), normalise(value), value.upper(), value.title())
                               if len(f.strip()) >= 3))
    forms += [f":{placeholder_token(stores.tenant_key, value)}>", key, *target.vault_tokens]
    return erase_target(stores, target, {"what": "subject", "entity_type": entity_type}, user=user, via=via,
                  subject=key, subject_values=forms)
