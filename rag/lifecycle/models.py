"""The catalog tables of the compliance lifecycle: legal holds, the keyed subject index, the vault.

They live in the catalog database beside the chunks they point at (Alembic revision
``0003_14_lifecycle``). None of them holds a personal value in clear: the subject index keys a
subject by an HMAC under the tenant key, and the vault holds only ciphertext.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from rag.catalog.models import Base, utcnow


class Hold(Base):
    """A legal hold on one document (by uri, in every source) or on a whole source; active until released."""

    __tablename__ = "lifecycle_holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))  # document | source
    target: Mapped[str] = mapped_column(Text)  # the document uri or the source name
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    released_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SubjectChunk(Base):
    """One chunk held one subject: the subject's keyed HMAC and entity type, never the value."""

    __tablename__ = "lifecycle_subjects"
    __table_args__ = (UniqueConstraint("chunk_id", "subject_key", "entity_type"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                          ForeignKey("chunks.id", ondelete="CASCADE"), index=True)
    subject_key: Mapped[str] = mapped_column(String(64), index=True)
    entity_type: Mapped[str] = mapped_column(String(64))


class VaultEntry(Base):
    """A pseudonym's original value, encrypted (AES-GCM under ENCLAVE_VAULT_KEY); erased with its subject."""

    __tablename__ = "lifecycle_vault"

    token: Mapped[str] = mapped_column(String(100), primary_key=True)  # e.g. PERSON_7f3a9c21
    entity_type: Mapped[str] = mapped_column(String(64))
    subject_key: Mapped[str] = mapped_column(String(64), index=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
