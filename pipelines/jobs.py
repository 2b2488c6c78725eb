"""Jobs: ingestion of a source, end to end, with its asset checks."""

from __future__ import annotations

import dagster as dg

ingest_documents_job = dg.define_asset_job(
    "ingest_documents_job",
    selection=dg.AssetSelection.groups("ingestion"),
    description="Scan a source, redact new and changed documents, embed and index them.",
)
