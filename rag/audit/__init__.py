"""The tamper-evident record of every search and answer, written before the response leaves.

    records   what one request did (AuditEntry), its canonical JSON and chained hash
    log       AuditLog: append, verify and export over SQLite or PostgreSQL, append-only
    export    JSONL/CSV exports and verify_export, which checks one away from the database
"""

from rag.audit.export import EXPORT_FORMAT, ExportFormat, verify_export
from rag.audit.log import TABLE_NAME, VERSION_TABLE, AuditLog, audit_records, metadata
from rag.audit.records import (
    FIELDS_BY_VERSION,
    GENESIS_HASH,
    RECORD_FIELDS,
    RECORD_FORMAT_VERSION,
    AuditEntry,
    AuditRecord,
    ChainHead,
    Kind,
    Outcome,
    RetrievedChunkRecord,
    StoredAuditRecord,
    VerifyReport,
    canonical_json,
    text_sha256,
)

__all__ = [
    "EXPORT_FORMAT",
    "FIELDS_BY_VERSION",
    "GENESIS_HASH",
    "RECORD_FIELDS",
    "RECORD_FORMAT_VERSION",
    "TABLE_NAME",
    "VERSION_TABLE",
    "AuditEntry",
    "AuditLog",
    "AuditRecord",
    "ChainHead",
    "ExportFormat",
    "Kind",
    "Outcome",
    "RetrievedChunkRecord",
    "StoredAuditRecord",
    "VerifyReport",
    "audit_records",
    "canonical_json",
    "metadata",
    "text_sha256",
    "verify_export",
]
