"""One ingestion pass of any connector through the library's real steps (scan, apply, parse+redact).

The tests of the sql and s3 connectors use it to show that a new kind of source goes through the
unchanged pipeline: the same ``scan_source`` diff, deletions, access re-tagging and redaction.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from connectors.base import Connector
from rag.catalog.models import Chunk, Document
from rag.catalog.store import CatalogStore
from rag.ingest import Manifest, RedactStats, apply_manifest, pipeline_version, redact_documents, scan_source
from rag.parsing import ParseLimits
from rag.policy import load_policy

POLICIES = Path(__file__).resolve().parent.parent / "policies"
TENANT_KEY = b"test-tenant-key"
LIMITS = ParseLimits(max_file_bytes=10 << 20, max_uncompressed_bytes=50 << 20, chunk_max_tokens=240)


def ingest_once(connector: Connector, catalog: CatalogStore, kind: str, policy: str = "default"
                ) -> tuple[Manifest, RedactStats]:
    loaded = load_policy(policy, POLICIES)
    version = pipeline_version(LIMITS)
    source_id = catalog.ensure_source(connector.name, kind, getattr(connector, "location", ""))
    manifest = scan_source(connector, catalog, source_id, loaded, version)
    apply_manifest(manifest, catalog)
    stats = redact_documents(manifest, connector, catalog, loaded, LIMITS, version, workers=1, timeout_s=120,
                             memory_mb=4096, policies_dir=POLICIES, tenant_key=TENANT_KEY)
    return manifest, stats


def stored(catalog: CatalogStore) -> dict[str, tuple[dict[str, object], str]]:
    """``{uri: (access, all chunk text)}`` of what the catalog holds."""
    with catalog.session() as s:
        docs = {d.id: d for d in s.scalars(select(Document))}
        texts: dict[int, list[str]] = {}
        for c in s.scalars(select(Chunk).order_by(Chunk.document_id, Chunk.ordinal)):
            texts.setdefault(c.document_id, []).append(c.text)
        return {d.uri: (d.access, "\n".join(texts.get(i, []))) for i, d in docs.items()}
