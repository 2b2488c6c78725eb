"""Ingestion steps: the library behind the Dagster assets (and so behind the CLI and the tests).

    scan_source     what the source holds now vs. the catalog: new, changed, unchanged, deleted
    redact_documents  parse → chunk → redact, in isolated workers, one step per document; only
                      redacted chunks come back to this process and reach the catalog
    embed_chunks    embed chunks that have no vector for the current model
    sync_index      make the FAISS index (and the BM25 index) hold exactly the catalog's chunks

Each step is idempotent: its input is the catalog's state, and each document is written in one
transaction, so a retried or resumed run converges to the state of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from connectors.base import Connector, SourceDocument
from rag.catalog.store import CatalogStore, NewChunk
from rag.errors import AccessRuleMissingError, QuarantinedError, QuarantineReason
from rag.parsing import ParsedChunk, ParseLimits
from rag.policy import Policy, load_policy, resolve_policy_path
from rag.workers import FileJob, ParsePool, Transformed

log = logging.getLogger(__name__)

# Bump when parsing, chunking or redaction changes in a way that should re-process documents.
PIPELINE_VERSION = "2026.12.1"
# Redaction passes before a chunk that still changes is given up on (quarantined redaction_failed);
# ordinary documents settle in two, table-like gibberish (gene-marker CSV columns) in four.
MAX_PASSES = 4


def pipeline_version(limits: ParseLimits) -> str:
    digest = hashlib.sha256(f"{PIPELINE_VERSION}|{limits.chunk_max_tokens}".encode()).hexdigest()[:8]
    return f"{PIPELINE_VERSION}+{digest}"


@dataclass(frozen=True)
class Manifest:
    """What the source holds compared to the catalog. Holds uris and hashes, never text."""

    source_id: int
    to_process: tuple[SourceDocument, ...]
    new: int
    changed: int
    unchanged: int
    deleted: tuple[str, ...]
    still_quarantined: int
    access_changed: tuple[tuple[int, dict[str, Any]], ...] = ()

    def counts(self) -> dict[str, int]:
        return {"new": self.new, "changed": self.changed, "unchanged": self.unchanged,
                "deleted": len(self.deleted), "still_quarantined": self.still_quarantined,
                "access_changed": len(self.access_changed)}


def apply_manifest(manifest: Manifest, catalog: CatalogStore) -> None:
    """Apply what needs no parsing: forget deleted documents, re-tag documents whose rule changed."""
    if manifest.deleted:
        catalog.delete_documents(manifest.source_id, manifest.deleted)
    for doc_id, access in manifest.access_changed:
        catalog.update_access(doc_id, access)


def scan_source(connector: Connector, catalog: CatalogStore, source_id: int, policy: Policy,
                version: str) -> Manifest:
    """Diff the source against the catalog. Refuses (deny by default) if any document has no access rule."""
    docs = list(connector.scan())
    no_rule = [d.uri for d in docs if d.access is None]
    if no_rule:
        shown = ", ".join(no_rule[:5]) + (" ..." if len(no_rule) > 5 else "")
        raise AccessRuleMissingError(
            f"{len(no_rule)} document(s) in source {connector.name!r} have no access rule ({shown}); "
            "add an .access.json ({\"groups\": [...]} or {\"public\": true}) or pass --groups/--public. "
            "Nothing was ingested.")
    known = catalog.known_documents(source_id)
    quarantined = catalog.known_quarantine(source_id)
    to_process: list[SourceDocument] = []
    access_changed: list[tuple[int, dict[str, Any]]] = []
    new = changed = unchanged = still_q = 0
    for d in docs:
        k = known.get(d.uri)
        q = quarantined.get(d.uri)
        if q is not None and q.sha256 == d.sha256 and q.pipeline_version == version:
            still_q += 1
            continue
        if k is None:
            new += 1
            to_process.append(d)
        elif (k.sha256 != d.sha256 or k.policy_hash != policy.content_hash or k.pipeline_version != version):
            changed += 1
            to_process.append(d)
        else:
            unchanged += 1
            assert d.access is not None
            if k.access != d.access.to_json():
                # a revoked or widened rule must apply now, not at the document's next edit
                access_changed.append((k.id, d.access.to_json()))
    seen = {d.uri for d in docs}
    deleted = tuple(sorted(u for u in set(known) | set(quarantined) if u not in seen))
    return Manifest(source_id, tuple(to_process), new, changed, unchanged, deleted, still_q, tuple(access_changed))


# --- parse + chunk + redact, inside the worker --------------------------------------------------


class RedactionNotConvergedError(Exception):
    """Raised inside a worker; becomes a redaction_failed quarantine record for the file."""


Removals = tuple[tuple[str, tuple[tuple[str, int, int], ...]], ...]  # per pass: analysed text, spans removed


class RedactionTransform:
    """Runs in each parse worker: redacts all chunks of a batch of files in one batched call, to a
    fixpoint, then lets the independent residual check (:mod:`rag.residual`) read the result.

    A file any of whose chunks the residual check flags is returned as a ``residual_pii``
    quarantine: nothing of it is stored (an earlier stored version stays). ``record_removals``
    (the PII evaluation) returns, per file, what each pass analysed and removed, as
    :class:`~rag.workers.Transformed` extra data.
    """

    def __init__(self, policy_ref: str, policies_dir: str, tenant_key: bytes, recheck_fraction: float = 1.0,
                 record_removals: bool = False) -> None:
        from rag.redaction import PresidioRedactor
        from rag.residual import ResidualScanner

        policy = load_policy(policy_ref, Path(policies_dir))
        self.redactor = PresidioRedactor(policy, tenant_key=tenant_key)
        self.redactor.warm_up()
        self.residual = ResidualScanner(policy)
        self.residual.warm_up()
        self.recheck_fraction = recheck_fraction
        self.record_removals = record_removals

    def _leave_for_recheck(self, content_hash: str) -> bool:
        """A deterministic sample (by content hash) that the no_residual_pii check scans again."""
        return int(content_hash[:8], 16) < self.recheck_fraction * 0x1_0000_0000

    def _to_fixpoint(self, texts: list[str]) -> tuple[list[tuple[str, Counter[str]]], list[Removals]]:
        """Redact until the detector finds nothing more (at most MAX_PASSES).

        Replacing one value changes the context of its neighbours, so a second pass can see what
        the first could not (a surname once the first name became a placeholder).
        """
        out = [(t, Counter[str]()) for t in texts]
        removals: list[list[tuple[str, tuple[tuple[str, int, int], ...]]]] = [[] for _ in texts]
        pending = list(range(len(texts)))
        for _ in range(MAX_PASSES):
            if not pending:
                break
            batch = [out[i][0] for i in pending]
            found = self.redactor.detect_many(batch)
            still = []
            for i, text, findings in zip(pending, batch, found, strict=True):
                if self.record_removals:
                    removals[i].append((text, tuple((f.entity_type, f.start, f.end) for f in findings)))
                r = self.redactor.redact(text, findings)
                if r.counts and r.text != text:
                    out[i][1].update(r.counts)
                    out[i] = (r.text, out[i][1])
                    still.append(i)
            pending = still
        if pending:
            # Redaction did not converge: storing this text would store what the detector still
            # sees as PII. Raising makes the worker pool retry the batch file by file and
            # quarantine this file as redaction_failed; the other files are stored.
            raise RedactionNotConvergedError(f"{len(pending)} chunk(s) still had findings after {MAX_PASSES} passes")
        return out, [tuple(r) for r in removals]

    def __call__(self, files: list[tuple[str, list[ParsedChunk]]]) -> list[Any]:
        texts = [c.text for _, chunks in files for c in chunks]
        redacted, removals = self._to_fixpoint(texts)
        residual = self.residual.scan([t for t, _ in redacted])
        out: list[Any] = []
        k = 0
        for _, chunks in files:
            n = len(chunks)
            flagged = [f for findings in residual[k:k + n] for f in findings]
            if flagged:
                from rag.residual import residual_types

                out.append(QuarantinedError(QuarantineReason.RESIDUAL_PII,
                                            f"after redaction the residual check still found {residual_types(flagged)} "
                                            f"in {sum(1 for x in residual[k:k + n] if x)} chunk(s)"))
                k += n
                continue
            stored: list[NewChunk] = []
            for c, (text, counts) in zip(chunks, redacted[k:k + n], strict=True):
                digest = hashlib.sha256(text.encode()).hexdigest()
                # the residual check passed exactly this text here; a sample is scanned again by
                # no_residual_pii in the main process, to catch a worker and the check disagreeing
                stored.append(NewChunk(ordinal=c.ordinal, text=text, content_hash=digest, title=None, page=c.page,
                                       entity_counts=dict(counts), pii_checked=not self._leave_for_recheck(digest)))
            out.append(Transformed(stored, removals[k:k + n]) if self.record_removals else stored)
            k += n
        return out


def redaction_transform_factory(policy_ref: str, policies_dir: str, tenant_key: bytes, recheck_fraction: float = 1.0,
                                record_removals: bool = False) -> Callable[[], RedactionTransform]:
    return partial(RedactionTransform, policy_ref, policies_dir, tenant_key, recheck_fraction, record_removals)


@dataclass
class RedactStats:
    processed: int = 0
    stored: int = 0
    quarantined: int = 0
    chunks_written: int = 0
    quarantine_by_reason: Counter[str] = field(default_factory=Counter)
    entities_removed: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0
    seconds: float = 0.0


def _jobs(connector: Connector, docs: tuple[SourceDocument, ...], catalog: CatalogStore, source_id: int,
          version: str, run_id: int | None, stats: RedactStats) -> Iterator[FileJob]:
    for d in docs:
        try:
            data = connector.read(d.uri)
        except OSError as exc:
            catalog.quarantine(source_id=source_id, uri=d.uri, sha256=d.sha256, size=d.size,
                               reason=QuarantineReason.READ_ERROR.value, detail=type(exc).__name__,
                               pipeline_version=version, run_id=run_id)
            stats.quarantined += 1
            stats.quarantine_by_reason[QuarantineReason.READ_ERROR.value] += 1
            continue
        if hashlib.sha256(data).hexdigest() != d.sha256:
            # changed between scan and read: the next run picks up the new content
            log.info("document changed during the run; skipped until next run", extra={"uri": d.uri})
            continue
        stats.bytes_in += len(data)
        yield FileJob(key=d.uri, filename=d.name, data=data)


def redact_documents(manifest: Manifest, connector: Connector, catalog: CatalogStore, policy: Policy,
                     limits: ParseLimits, version: str, *, workers: int, timeout_s: float, memory_mb: int,
                     policies_dir: Path, tenant_key: bytes, run_id: int | None = None,
                     on_progress: Callable[[int], None] | None = None, recheck_fraction: float = 1.0,
                     policy_ref: str | None = None) -> RedactStats:
    """Parse, chunk and redact ``manifest.to_process`` in worker processes; store or quarantine each.

    ``policy_ref`` is the name or file the policy was loaded from (workers load it again); by
    default ``policy.name`` in ``policies_dir``.
    """
    stats = RedactStats()
    started = time.perf_counter()
    by_uri = {d.uri: d for d in manifest.to_process}
    if not by_uri:
        return stats
    ref = str(resolve_policy_path(policy_ref or policy.name, policies_dir).resolve())
    factory = redaction_transform_factory(ref, str(policies_dir), tenant_key, recheck_fraction)
    with ParsePool(workers=workers, timeout_s=timeout_s, memory_mb=memory_mb, limits=limits,
                   transform_factory=factory) as pool:
        for outcome in pool.process(_jobs(connector, manifest.to_process, catalog, manifest.source_id,
                                          version, run_id, stats)):
            d = by_uri[outcome.key]
            stats.processed += 1
            if outcome.quarantine is not None:
                reason, detail = outcome.quarantine
                catalog.quarantine(source_id=manifest.source_id, uri=d.uri, sha256=d.sha256, size=d.size,
                                   reason=QuarantineReason(reason).value, detail=detail,
                                   pipeline_version=version, run_id=run_id)
                stats.quarantined += 1
                stats.quarantine_by_reason[QuarantineReason(reason).value] += 1
            else:
                chunks: list[NewChunk] = list(outcome.chunks or [])
                assert d.access is not None  # scan_source refused documents without a rule
                catalog.store_document(source_id=manifest.source_id, uri=d.uri, sha256=d.sha256, size=d.size,
                                       access=d.access.to_json(), policy_name=policy.name,
                                       policy_hash=policy.content_hash, pipeline_version=version, chunks=chunks)
                stats.stored += 1
                stats.chunks_written += len(chunks)
                for c in chunks:
                    stats.entities_removed.update(c.entity_counts)
            if on_progress is not None:
                on_progress(1)
    stats.seconds = time.perf_counter() - started
    return stats


# --- embedding and index --------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedStats:
    embedded: int
    seconds: float


def embed_chunks(catalog: CatalogStore, embedder: Any, batch: int = 512,
                 on_progress: Callable[[int], None] | None = None) -> EmbedStats:
    started = time.perf_counter()
    model_id = embedder.model_id
    done = 0
    while True:
        rows = catalog.chunks_needing_embedding(model_id, batch)
        if not rows:
            break
        ids = [r[0] for r in rows]
        vectors = embedder.embed_passages([r[1] for r in rows])
        catalog.set_embeddings(model_id, ids, vectors)
        done += len(ids)
        if on_progress is not None:
            on_progress(len(ids))
    return EmbedStats(done, time.perf_counter() - started)


def sync_index(catalog: CatalogStore, index: Any, lexical: Any | None = None) -> dict[str, Any]:
    """Make the vector index (and the BM25 index, when given) hold exactly the catalog's embedded chunks."""
    started = time.perf_counter()
    desired = catalog.embedded_chunk_ids(index.model_id)
    report = index.reconcile(desired, lambda ids: catalog.embeddings_for(ids, index.dim))
    out: dict[str, Any] = {"added": report.added, "removed": report.removed, "rebuilt": report.rebuilt,
                           "vectors": report.total, "kind": report.kind, "generation": report.generation}
    if lexical is not None:
        out["lexical_documents"] = lexical.sync(catalog, desired)
    out["seconds"] = time.perf_counter() - started
    return out
