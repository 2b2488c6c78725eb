"""Retention: rules that say how long documents are kept, applied with one receipt per run.

``policies/retention.yaml`` (schema ``policies/retention.schema.json``, generated from
:class:`RetentionFile`) lists rules; a rule matches a document by source name, uri glob and access
group (every field given must match), and after ``period`` since the document was last stored its
``action`` applies:

- ``erase``: the document goes from every store, as ``enclave erase --document`` would;
- ``pseudonymise``: the document stays, but every link to a person goes: keyed placeholders
  (``<PERSON:1a2b3c4d>``) become type-only ones, its subject-index rows and vault entries are
  destroyed, so no one can find or re-identify its subjects any more.

The first matching rule wins. Documents under legal hold are skipped and named in the receipt.
``enclave retention apply`` and the Dagster ``apply_retention_job`` (on a daily schedule) call
:func:`apply_retention`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select

from rag.catalog.models import Chunk, Document, Source
from rag.errors import PolicyInvalidError
from rag.lifecycle.erase import LifecycleStores, Target, erase_target
from rag.lifecycle.models import SubjectChunk, VaultEntry
from rag.lifecycle.subjects import without_tokens

Action = Literal["erase", "pseudonymise"]
_PERIOD = re.compile(r"^(\d+)([dwmy])$")
_DAYS = {"d": 1, "w": 7, "m": 30, "y": 365}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetentionMatch(_Strict):
    source: str | None = Field(default=None, description="Source name, exactly.")
    path: str | None = Field(default=None, description="Glob over the document uri, e.g. 'oncology/*'.")
    group: str | None = Field(default=None, description="An access group the document is shared with.")


class RetentionRule(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    match: RetentionMatch = Field(default_factory=RetentionMatch)
    period: str = Field(description="How long after it was last stored: 30d, 12w, 18m, 7y.")
    action: Action

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        if not _PERIOD.match(value):
            raise ValueError("period is a number and a unit: d, w, m (30 days) or y (365 days), e.g. 7y")
        return value

    @property
    def days(self) -> int:
        m = _PERIOD.match(self.period)
        assert m is not None  # validated
        return int(m.group(1)) * _DAYS[m.group(2)]

    def matches(self, source: str, uri: str, access: dict[str, Any]) -> bool:
        if self.match.source is not None and self.match.source != source:
            return False
        if self.match.path is not None and not fnmatch.fnmatchcase(uri, self.match.path):
            return False
        return self.match.group is None or self.match.group in (access.get("groups") or ())


class RetentionFile(_Strict):
    rules: list[RetentionRule] = Field(default_factory=list)


@dataclass(frozen=True)
class RetentionRules:
    rules: tuple[RetentionRule, ...]
    content_hash: str
    file: str


def load_retention(path: Path) -> RetentionRules:
    data = Path(path).read_bytes()
    try:
        parsed = RetentionFile.model_validate(yaml.safe_load(data) or {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise PolicyInvalidError(f"retention rules {path} are invalid: {exc}") from exc
    names = [r.name for r in parsed.rules]
    if len(set(names)) != len(names):
        raise PolicyInvalidError(f"retention rules {path} repeat a rule name")
    return RetentionRules(tuple(parsed.rules), hashlib.sha256(data).hexdigest(), str(path))


def write_schema(path: Path) -> None:
    path.write_text(json.dumps(RetentionFile.model_json_schema(), indent=2) + "\n")


@dataclass(frozen=True)
class DueDocument:
    id: int
    source: str
    uri: str
    version: int
    rule: str
    action: Action


def due_documents(stores: LifecycleStores, rules: RetentionRules, now: datetime) -> list[DueDocument]:
    """Documents whose first matching rule's period has passed at ``now``."""
    out = []
    with stores.catalog.session() as s:
        rows = s.execute(select(Document.id, Document.uri, Document.version, Document.access, Document.updated_at,
                                Source.name).join(Source, Source.id == Document.source_id).order_by(Document.id))
        for r in rows:
            rule = next((x for x in rules.rules if x.matches(r.name, r.uri, r.access or {})), None)
            if rule is None:
                continue
            stored = r.updated_at if r.updated_at.tzinfo else r.updated_at.replace(tzinfo=UTC)
            if stored + timedelta(days=rule.days) <= now:
                out.append(DueDocument(r.id, r.name, r.uri, r.version, rule.name, rule.action))
    return out


def pseudonymise_documents(stores: LifecycleStores, document_ids: list[int]) -> int:
    """Unlink documents from their subjects: keyed placeholders become type-only, subject rows and vault entries go.

    Chunks keep their embeddings: a vector does not hold the token's text, and the chunk stays findable.
    """
    changed = 0
    with stores.catalog.session() as s, s.begin():
        chunk_rows = s.execute(select(Chunk.id, Chunk.text).where(Chunk.document_id.in_(document_ids))).all()
        chunk_ids = [c.id for c in chunk_rows]
        keys = set(s.scalars(select(SubjectChunk.subject_key).where(SubjectChunk.chunk_id.in_(chunk_ids))))
        for c in chunk_rows:
            text = without_tokens(c.text)
            if text != c.text:
                row = s.get(Chunk, c.id)
                assert row is not None
                row.text, row.content_hash = text, hashlib.sha256(text.encode()).hexdigest()
                changed += 1
        for sc in s.scalars(select(SubjectChunk).where(SubjectChunk.chunk_id.in_(chunk_ids))):
            s.delete(sc)
        # a subject's pseudonyms go with the link, unless another (kept) chunk still holds the subject
        still = set(s.scalars(select(SubjectChunk.subject_key).where(SubjectChunk.subject_key.in_(keys),
                                                                     SubjectChunk.chunk_id.not_in(chunk_ids))))
        for entry in s.scalars(select(VaultEntry).where(VaultEntry.subject_key.in_(keys - still))):
            s.delete(entry)
    return changed


def apply_retention(stores: LifecycleStores, rules: RetentionRules, *, user: str, now: datetime | None = None,
                    via: str = "cli") -> dict[str, Any]:
    """Apply the rules once: erase or pseudonymise what is due, skip what is held; returns the run's receipt."""
    now = now or datetime.now(UTC)
    due = due_documents(stores, rules, now)
    holds = stores.holds()
    skipped: list[dict[str, Any]] = []
    to_erase: list[dict[str, Any]] = []
    to_pseudonymise: list[dict[str, Any]] = []
    for d in due:
        held = holds.holds_on(d.uri, d.source)
        entry = {"id": d.id, "source": d.source, "uri": d.uri, "version": d.version, "rule": d.rule}
        if held:
            skipped.append({**entry, "hold_id": held[0].id})
        elif d.action == "erase":
            to_erase.append(entry)
        else:
            to_pseudonymise.append(entry)
    pseudonymised = pseudonymise_documents(stores, [d["id"] for d in to_pseudonymise]) if to_pseudonymise else 0
    with stores.catalog.session() as s:
        ids = [d["id"] for d in to_erase]
        chunk_ids = tuple(int(c) for c in s.scalars(select(Chunk.id).where(Chunk.document_id.in_(ids)))) if ids else ()
        files = {r.id: (r.sha256, int(r.size)) for r in s.execute(
            select(Document.id, Document.sha256, Document.size).where(Document.id.in_(ids)))} if ids else {}
    target = Target(tuple(d["id"] for d in to_erase), chunk_ids, tuple(to_erase),
                    files=tuple((d["source"], d["uri"], *files[d["id"]]) for d in to_erase))
    request = {"what": "retention", "rules_file": Path(rules.file).name, "rules_sha256": rules.content_hash,
               "as_of": now.astimezone(UTC).isoformat()}
    extra = {"skipped_held": skipped, "pseudonymised": to_pseudonymise, "pseudonymised_chunks": pseudonymised}
    return erase_target(stores, target, request, user=user, via=via, kind="retention", extra=extra)
