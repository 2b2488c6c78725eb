"""Audit records: what one request did, its canonical JSON form, and the hash that chains it.

One record per search, ask or chat, and per compliance action (erasure, retention run, hold
change, re-identification: :mod:`rag.lifecycle`, in the ``event`` field). Its content is one
canonical JSON text (RFC 8785, JSON Canonicalization Scheme, through the ``rfc8785`` package)
that includes ``seq`` and ``prev_hash`` themselves, so the hash has one unambiguous input:

    record_hash = sha256(content_utf8),  content = JCS({"v": 1, "seq": n, "prev_hash": h(n-1), ...fields})

with ``h(0)`` = 64 zeros (:data:`GENESIS_HASH`). :func:`record_problem` says why a stored or
exported record does not support its own seq and hashes; :mod:`rag.audit.log` and
:mod:`rag.audit.export` both check records with it.

Records hold the *redacted* question only; the answer is generated from redacted chunks. Error
messages here name seqs and fields, never record text.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import rfc8785

from rag.errors import AuditIntegrityError

GENESIS_HASH = "0" * 64
# 2 added authenticated_via (how the caller's identity was verified) and llm_distribution (which
# installed distribution provided the generator). Records keep the version they were written in.
# 3 (issue 14) added event: what a compliance action did (an erasure receipt's digest and counts, a
# hold change, a re-identification), never the personal data it acted on; null on request records.
# 4 (issue 13, streamed chat) added stage, prompt_seq and turns_used: a streamed answer is two
# records of the chain, "prompt" (what the model was shown, committed before the first byte
# leaves, outcome "pending") and "answer" (the answer or the failure, naming the prompt record's
# seq); a whole-answer request stays one "complete" record. turns_used counts the earlier user
# turns of a conversation that shaped retrieval (they are in question_redacted, redacted).
RECORD_FORMAT_VERSION = 4
_ADDED_IN_V2 = ("authenticated_via", "llm_distribution")
_ADDED_IN_V3 = ("event",)
_ADDED_IN_V4 = ("stage", "prompt_seq", "turns_used")

# search, ask and chat are requests; the others are compliance actions (rag.lifecycle).
Kind = Literal["search", "ask", "chat", "erase", "hold", "reveal", "retention"]
# "refused": the service turned the request away before reading its question (too large, invalid,
# over its rate limit); error_type names the reason. "pending": the prompt record of a streamed answer.
Outcome = Literal["ok", "no_results", "invalid_answer", "error", "timeout", "refused", "pending"]
Stage = Literal["complete", "prompt", "answer"]
SamplingValue = str | int | float | bool | None


def text_sha256(value: str) -> str:
    """Hex sha256 of a text's UTF-8 bytes (answer hashes; question hashes of redacted text)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def canonical_json(value: Any) -> str:
    """RFC 8785 canonical JSON text: the one serialisation that record hashes are computed over."""
    return rfc8785.dumps(value).decode("utf-8")


def to_utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware")
    return value.astimezone(UTC)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def check_finite(value: float, what: str) -> None:
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
        check_finite(self.score, "chunk score")

    def to_json(self) -> dict[str, Any]:
        return {"chunk_id": self.chunk_id, "document_id": self.document_id,
                "document_version": self.document_version, "content_hash": self.content_hash,
                "score": self.score, "shown_to_model": self.shown_to_model}


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    """What one request did, as the service hands it to :meth:`AuditLog.append`.

    ``question_redacted`` is the question after redaction; ``question_hash`` is computed by the
    caller (a keyed hash if it is over the unredacted text). ``answer_hash`` is filled in from
    ``answer`` when left empty. ``llm_model`` is the model name, or what the server reported;
    ``llm_distribution`` the installed distribution (``name version``) whose generator answered.
    ``authenticated_via`` says how the caller's identity was verified (``jwt``,
    ``trusted-header``), or ``cli`` where an operator named the user on the command line.
    """

    request_id: str
    kind: Kind
    user: str
    question_redacted: str
    question_hash: str
    outcome: Outcome
    latency_ms: float
    groups: tuple[str, ...] = ()
    authenticated_via: str | None = None
    purpose: str | None = None
    chunks: tuple[RetrievedChunkRecord, ...] = ()
    policy_name: str = ""
    policy_hash: str = ""
    index_version: str = ""
    embedding_model: str = ""
    embedding_model_hash: str = ""
    llm_backend: str | None = None
    llm_distribution: str | None = None
    llm_model: str | None = None
    llm_weights_hash: str | None = None
    sampling: Mapping[str, SamplingValue] = field(default_factory=dict)
    prompt_template_version: str | None = None
    answer: str | None = None
    answer_hash: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_type: str | None = None
    event: Mapping[str, Any] | None = None
    stage: Stage = "complete"
    prompt_seq: int | None = None
    turns_used: int = 0
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.kind not in get_args(Kind):
            raise ValueError(f"audit kind must be one of {get_args(Kind)}, not {self.kind!r}")
        if self.outcome not in get_args(Outcome):
            raise ValueError(f"audit outcome must be one of {get_args(Outcome)}, not {self.outcome!r}")
        if self.stage not in get_args(Stage):
            raise ValueError(f"audit stage must be one of {get_args(Stage)}, not {self.stage!r}")
        if (self.stage == "answer") != (self.prompt_seq is not None):
            raise ValueError("an answer record names its prompt record's seq, and only an answer record does")
        check_finite(self.latency_ms, "latency_ms")
        for key, value in self.sampling.items():
            if isinstance(value, float):
                check_finite(value, f"sampling parameter {key}")
        object.__setattr__(self, "ts", to_utc(self.ts, "audit entry time"))
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
            "ts": iso(self.ts),
            "request_id": self.request_id,
            "kind": self.kind,
            "user": self.user,
            "groups": list(self.groups),
            "authenticated_via": self.authenticated_via,
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
            "llm_distribution": self.llm_distribution,
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
            "event": dict(self.event) if self.event is not None else None,
            "stage": self.stage,
            "prompt_seq": self.prompt_seq,
            "turns_used": self.turns_used,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> AuditEntry:
        """Rebuild an entry from record content (as stored or exported; v1 records lack the v2 fields)."""
        return cls(
            authenticated_via=body.get("authenticated_via"), llm_distribution=body.get("llm_distribution"),
            ts=parse_iso(body["ts"]), request_id=body["request_id"], kind=body["kind"], user=body["user"],
            groups=tuple(body["groups"]), purpose=body["purpose"], question_redacted=body["question_redacted"],
            question_hash=body["question_hash"],
            chunks=tuple(RetrievedChunkRecord(**c) for c in body["chunks"]),
            policy_name=body["policy_name"], policy_hash=body["policy_hash"], index_version=body["index_version"],
            embedding_model=body["embedding_model"], embedding_model_hash=body["embedding_model_hash"],
            llm_backend=body["llm_backend"], llm_model=body["llm_model"], llm_weights_hash=body["llm_weights_hash"],
            sampling=body["sampling"], prompt_template_version=body["prompt_template_version"],
            answer=body["answer"], answer_hash=body["answer_hash"], prompt_tokens=body["prompt_tokens"],
            completion_tokens=body["completion_tokens"], latency_ms=body["latency_ms"], outcome=body["outcome"],
            error_type=body["error_type"], event=body.get("event"),
            stage=body.get("stage", "complete"), prompt_seq=body.get("prompt_seq"),
            turns_used=body.get("turns_used", 0),
        )


# Top-level keys of a record's content, in export column order (the current format's).
RECORD_FIELDS: tuple[str, ...] = ("v", "seq", "prev_hash", *AuditEntry(
    request_id="", kind="search", user="", question_redacted="", question_hash="", outcome="ok", latency_ms=0.0,
).to_json().keys())
# The keys each format version's records carry.
FIELDS_BY_VERSION: dict[int, tuple[str, ...]] = {
    1: tuple(f for f in RECORD_FIELDS if f not in _ADDED_IN_V2 + _ADDED_IN_V3 + _ADDED_IN_V4),
    2: tuple(f for f in RECORD_FIELDS if f not in _ADDED_IN_V3 + _ADDED_IN_V4),
    3: tuple(f for f in RECORD_FIELDS if f not in _ADDED_IN_V4),
    4: RECORD_FIELDS,
}


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


def build_content(entry: AuditEntry, seq: int, prev_hash: str) -> str:
    return canonical_json({"v": RECORD_FORMAT_VERSION, "seq": seq, "prev_hash": prev_hash, **entry.to_json()})


def record_problem(seq: int, prev_hash: str, record_hash: str, content: str) -> str | None:
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
    # A record carries at least the first format's fields, and those its version added since.
    version = body.get("v")
    required = FIELDS_BY_VERSION.get(version, FIELDS_BY_VERSION[1]) if type(version) is int else FIELDS_BY_VERSION[1]
    missing = set(required) - body.keys()
    if missing:
        return f"content lacks fields {sorted(missing)}"
    return None
