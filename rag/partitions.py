"""Partitions of one ingestion run: the redact and embed steps split so that many run at once.

A run's documents fall into ``n`` partitions by a hash of their uri (stable across runs and the
same for every connector kind: a directory tree, a key range of rows, a prefix of objects), and
its chunks needing a vector into ``n`` partitions by chunk id. Each partition is redacted or
embedded by its own step, wherever the orchestrator runs it (pipelines/partitioned.py: Dagster's
multiprocess or celery executor); the step writes only its own documents or chunks, each in one
transaction, so two steps never touch the same row and a retried step converges to the same
state. The steps' counts are merged into the run once, and the index is published afterwards in
one atomic step (:func:`rag.ingest.publish_run`) from what the catalog then holds, which is what
makes a partitioned run give the catalog and index of a single-process one.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, select

from connectors.base import Connector, SourceDocument
from rag.catalog.models import Chunk, Document, QuarantineRecord
from rag.catalog.store import CatalogStore
from rag.ingest import EmbedStats, Manifest, PlannedRun, RedactionOptions, RedactStats, redact_documents


@dataclass(frozen=True)
class Partition:
    """Partition ``index`` of ``count``; its key names it in the run's steps (``p003of016``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"partition {self.index} is not one of {self.count}")

    @property
    def key(self) -> str:
        return f"p{self.index:03d}of{self.count:03d}"

    def holds_uri(self, uri: str) -> bool:
        return int.from_bytes(hashlib.sha256(uri.encode()).digest()[:8], "big") % self.count == self.index


def partitions(count: int) -> list[Partition]:
    return [Partition(i, count) for i in range(count)]


def manifest_part(manifest: Manifest, part: Partition) -> Manifest:
    """The manifest restricted to the documents of ``part`` (the counts stay the run's)."""
    return replace(manifest, to_process=tuple(d for d in manifest.to_process if part.holds_uri(d.uri)))


def busy_partitions(manifest: Manifest, count: int) -> list[Partition]:
    """The partitions with documents to redact; at least one, so the later steps always run."""
    busy = [p for p in partitions(count) if any(p.holds_uri(d.uri) for d in manifest.to_process)]
    return busy or [Partition(0, count)]


def redact_part(planned: PlannedRun, part: Partition, connector: Connector, catalog: CatalogStore,
                options: RedactionOptions, on_progress: Callable[[int], None] | None = None) -> RedactStats:
    """Redact the run's new and changed documents of one partition; the counts are returned, not recorded.

    A retry of the step (its worker lost half-way) skips what the lost attempt already wrote for this
    run, counting it as written, so the documents keep the version and chunks a single attempt gives.
    """
    policy = planned.policy.load(options.policies_dir)
    mine = manifest_part(planned.manifest, part)
    earlier, done = _written_earlier(catalog, planned, mine.to_process)
    stats = redact_documents(
        replace(mine, to_process=tuple(d for d in mine.to_process if d.uri not in done)), connector, catalog, policy,
        options.limits, planned.version, workers=options.workers, timeout_s=options.timeout_s,
        memory_mb=options.memory_mb, policies_dir=options.policies_dir, tenant_key=options.tenant_key,
        run_id=planned.run_id, on_progress=on_progress, recheck_fraction=options.recheck_fraction,
        policy_ref=planned.policy.file)
    stats.processed += earlier.processed
    stats.stored += earlier.stored
    stats.quarantined += earlier.quarantined
    stats.chunks_written += earlier.chunks_written
    stats.quarantine_by_reason.update(earlier.quarantine_by_reason)
    stats.entities_removed.update(earlier.entities_removed)
    stats.bytes_in += earlier.bytes_in
    return stats


def _written_earlier(catalog: CatalogStore, planned: PlannedRun,
                     docs: Sequence[SourceDocument]) -> tuple[RedactStats, set[str]]:
    """Which of ``docs`` the catalog already holds as this run leaves them (stored at the planned hash,
    policy and pipeline version, or quarantined by this run at that hash), with their counts."""
    stats = RedactStats()
    done: set[str] = set()
    wanted = {d.uri: d for d in docs}
    source_id = planned.manifest.source_id
    uris = list(wanted)
    with catalog.session() as s:
        for start in range(0, len(uris), 500):
            batch = uris[start:start + 500]
            stored = s.execute(
                select(Document.uri, Document.sha256, Document.policy_hash, Document.pipeline_version,
                       Document.entity_counts, Document.size, func.count(Chunk.id).label("chunks"))
                .outerjoin(Chunk, Chunk.document_id == Document.id)
                .where(Document.source_id == source_id, Document.uri.in_(batch)).group_by(Document.id))
            for r in stored:
                if (r.sha256, r.policy_hash, r.pipeline_version) == (wanted[r.uri].sha256, planned.policy.content_hash,
                                                                     planned.version):
                    done.add(r.uri)
                    stats.processed += 1
                    stats.stored += 1
                    stats.chunks_written += r.chunks
                    stats.entities_removed.update(Counter(r.entity_counts or {}))
                    stats.bytes_in += r.size
            quarantined = s.execute(
                select(QuarantineRecord.uri, QuarantineRecord.sha256, QuarantineRecord.reason, QuarantineRecord.size)
                .where(QuarantineRecord.source_id == source_id, QuarantineRecord.uri.in_(batch),
                       QuarantineRecord.run_id == planned.run_id))
            for r in quarantined:
                if r.sha256 == wanted[r.uri].sha256 and r.uri not in done:
                    done.add(r.uri)
                    stats.processed += 1
                    stats.quarantined += 1
                    stats.quarantine_by_reason[r.reason] += 1
                    if r.reason != "read_error":
                        stats.bytes_in += r.size
    return stats, done


def merge_redact_counts(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The run's redaction counts from its partitions' (:meth:`RedactStats.run_fields`); seconds add up."""
    total = RedactStats()
    for p in parts:
        total.stored += p["documents_written"]
        total.quarantined += p["quarantined"]
        total.chunks_written += p["chunks_written"]
        total.quarantine_by_reason.update(Counter(p["quarantine_by_reason"]))
        total.entities_removed.update(Counter(p["entities_removed"]))
        total.bytes_in += p["bytes_in"]
        total.seconds += p["redact_seconds"]
    return total.run_fields()


def embed_part(catalog: CatalogStore, embedder: Any, part: Partition, batch: int = 512,
               on_progress: Callable[[int], None] | None = None) -> EmbedStats:
    """Embed the chunks of ``part`` (by chunk id) that have no vector from the current model."""
    started = time.perf_counter()
    model_id = embedder.model_id
    done = 0
    after = -1
    while True:
        with catalog.session() as s:
            rows = s.execute(select(Chunk.id, Chunk.text)
                             .where((Chunk.embedding.is_(None)) | (Chunk.embedding_model != model_id),
                                    Chunk.id % part.count == part.index, Chunk.id > after)
                             .order_by(Chunk.id).limit(batch)).all()
        if not rows:
            break
        ids = [r.id for r in rows]
        catalog.set_embeddings(model_id, ids, embedder.embed_passages([r.text for r in rows]))
        done += len(ids)
        after = ids[-1]
        if on_progress is not None:
            on_progress(len(ids))
    return EmbedStats(done, time.perf_counter() - started)


def merge_embed_counts(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    parts = list(parts)
    return EmbedStats(sum(p["chunks_embedded"] for p in parts),
                      sum(p["embed_seconds"] for p in parts)).run_fields()
