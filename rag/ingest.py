"""Ingestion: how documents get into Enclave, as plain steps in a fixed order.

    start_run           record the run before anything is touched (so a refused run is on record)
    plan_run            scan the source against the catalog (new, changed, unchanged, deleted);
                        apply what needs no parsing (deletions, changed access rules); record the
                        run and its manifest (uris, hashes, access rules; never text)
    redact_run          parse → chunk → redact each new or changed document in isolated workers;
                        only redacted chunks come back to this process and reach the catalog
    check_residual_pii  the independent residual detector (rag.residual) over stored chunks no worker verified (and a
                        sample of those it did); any finding blocks embedding
    embed_run           embed chunks that have no vector for the current model
    publish_run         make the FAISS and BM25 indexes hold exactly the catalog's embedded
                        chunks, saved atomically
    check_index         the index holds exactly the catalog's live, embedded chunks

:func:`run_ingestion` runs them in this order in this process; the Dagster assets and checks in
``pipelines/`` call one each (``dagster dev`` and the ``enclave ingest`` command run that job).
Each step is idempotent: its input is the catalog's state, and each document is written in one
transaction, so a retried or resumed run converges to the state of an uninterrupted one. What a
run did travels as typed counts (:class:`RunCounts`), stored with the run in the catalog; a run
ends ``completed`` or ``failed`` with its reason and duration (:func:`failing_run`, and in
Dagster a failure hook and sensor).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property, partial
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from connectors.base import AccessRule, Connector, SourceDocument
from rag.catalog.store import CatalogStore, NewChunk
from rag.errors import (
    AccessRuleMissingError,
    ConfigurationError,
    EnclaveError,
    PolicyInvalidError,
    QuarantinedError,
    QuarantineReason,
)
from rag.lifecycle.subjects import subject_key
from rag.lifecycle.vault import VaultCipher, pseudonym_token
from rag.parsing import ParsedChunk, ParseLimits
from rag.policy import Policy, load_policy, resolve_policy_path
from rag.workers import FileJob, ParsePool, Transformed

if TYPE_CHECKING:
    from rag.config import Settings
    from rag.embedding import SentenceTransformerEmbedder
    from rag.index import FaissIndex
    from rag.lexical import Bm25Index
    from rag.redaction import Finding

log = logging.getLogger(__name__)

# Bump when parsing, chunking or redaction changes in a way that should re-process documents.
PIPELINE_VERSION = "2026.12.1"
# Redaction passes before a chunk that still changes is given up on (quarantined redaction_failed);
# ordinary documents settle in two, table-like gibberish (gene-marker CSV columns) in four.
MAX_PASSES = 4
# Chunks the residual-PII check reads from the catalog at a time.
RESCAN_BATCH = 512


def pipeline_version(limits: ParseLimits) -> str:
    digest = hashlib.sha256(f"{PIPELINE_VERSION}|{limits.chunk_max_tokens}".encode()).hexdigest()[:8]
    return f"{PIPELINE_VERSION}+{digest}"


class IngestionRunMissingError(EnclaveError):
    """A step that continues a run found no run recorded for it (plan_run was not run first)."""


# --- what a run did -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexReport:
    """What publishing the indexes changed."""

    added: int = 0
    removed: int = 0
    rebuilt: bool = False
    vectors: int = 0
    kind: str = ""
    generation: int = 0
    lexical_documents: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class RunCounts:
    """Everything a run counted, step by step. Stored as JSON with the run; never document text."""

    # plan_run
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    still_quarantined: int = 0
    access_changed: int = 0
    # redact_run
    documents_written: int = 0
    quarantined: int = 0
    chunks_written: int = 0
    quarantine_by_reason: Mapping[str, int] = field(default_factory=dict)
    entities_removed: Mapping[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    redact_seconds: float = 0.0
    # embed_run
    chunks_embedded: int = 0
    embed_seconds: float = 0.0
    # publish_run
    index: IndexReport | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["quarantine_by_reason"] = dict(self.quarantine_by_reason)
        data["entities_removed"] = dict(self.entities_removed)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunCounts:
        """Counts as stored; a field a step did not reach (or an older run did not record) is zero."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("index"), Mapping):
            index_known = {f.name for f in fields(IndexReport)}
            values["index"] = IndexReport(**{k: v for k, v in values["index"].items() if k in index_known})
        return cls(**values)


@dataclass(frozen=True)
class PolicyRef:
    """The policy a run redacts under: its name, content hash, and the file workers load it from."""

    name: str
    content_hash: str
    file: str

    @classmethod
    def resolve(cls, policy_ref: str, policies_dir: Path) -> PolicyRef:
        """A policy name in ``policies_dir`` or a policy file anywhere, loaded and pinned to its hash."""
        policy = load_policy(policy_ref, policies_dir)
        path = resolve_policy_path(policy_ref, policies_dir).resolve()
        return cls(policy.name, policy.content_hash, str(path))

    def load(self, policies_dir: Path) -> Policy:
        """The policy again, refused if its file changed since the run recorded it."""
        policy = load_policy(self.file, policies_dir)
        if policy.content_hash != self.content_hash:
            raise PolicyInvalidError(f"policy file {self.file} changed during the run (hash "
                                     f"{policy.content_hash[:12]}, the run started with {self.content_hash[:12]}); "
                                     "run ingestion again")
        return policy


# --- plan: scan and apply -----------------------------------------------------------------------


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

    def counts(self) -> RunCounts:
        return RunCounts(new=self.new, changed=self.changed, unchanged=self.unchanged, deleted=len(self.deleted),
                         still_quarantined=self.still_quarantined, access_changed=len(self.access_changed))

    def to_json(self) -> dict[str, Any]:
        """What the later steps of the run need, as stored with the run (access changes are applied already)."""
        return {"source_id": self.source_id, "deleted": list(self.deleted),
                "counts": {"new": self.new, "changed": self.changed, "unchanged": self.unchanged,
                           "still_quarantined": self.still_quarantined},
                "to_process": [{"uri": d.uri, "sha256": d.sha256, "size": d.size, "name": d.name,
                                "access": d.access.to_json() if d.access else None} for d in self.to_process]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        docs = tuple(SourceDocument(uri=d["uri"], sha256=d["sha256"], size=d["size"], name=d["name"],
                                    access=AccessRule.from_json(d["access"]) if d["access"] else None)
                     for d in data["to_process"])
        c = data["counts"]
        return cls(data["source_id"], docs, c["new"], c["changed"], c["unchanged"], tuple(data["deleted"]),
                   c["still_quarantined"])


@dataclass(frozen=True)
class PlannedRun:
    """A run as recorded by :func:`plan_run`: its catalog id, manifest and policy."""

    run_id: int
    manifest: Manifest
    policy: PolicyRef
    version: str


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
        if q is not None and q.sha256 == d.sha256 and (q.pipeline_version == version or q.reason == "erased"):
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


def apply_manifest(manifest: Manifest, catalog: CatalogStore) -> None:
    """Apply what needs no parsing: forget deleted documents, re-tag documents whose rule changed."""
    if manifest.deleted:
        catalog.delete_documents(manifest.source_id, manifest.deleted)
    for doc_id, access in manifest.access_changed:
        catalog.update_access(doc_id, access)


def start_run(connector: Connector, kind: str, location: str, catalog: CatalogStore, policy: PolicyRef,
              version: str, *, dagster_run_id: str | None = None) -> int:
    """Record a run before it touches anything, so that a refused or failed run is on record too."""
    source_id = catalog.ensure_source(connector.name, kind, location)
    return catalog.start_run(source_id, policy.name, policy.content_hash, dagster_run_id,
                             manifest={"source_id": source_id, "policy": asdict(policy), "pipeline_version": version})


def plan_run(run_id: int, connector: Connector, catalog: CatalogStore, policies_dir: Path) -> PlannedRun:
    """First step of a run: scan the source, apply what needs no parsing, record the manifest with the run."""
    run = catalog.run(run_id)
    if run is None:
        raise IngestionRunMissingError(f"no ingestion run {run_id} in the catalog; start_run records one")
    started = run.manifest
    policy, version = PolicyRef(**started["policy"]), str(started["pipeline_version"])
    manifest = scan_source(connector, catalog, int(started["source_id"]), policy.load(policies_dir), version)
    apply_manifest(manifest, catalog)
    catalog.update_run(run_id, manifest.counts().to_json(), manifest={**started, **manifest.to_json()})
    return PlannedRun(run_id, manifest, policy, version)


def planned_run(catalog: CatalogStore, dagster_run_id: str) -> PlannedRun:
    """The run :func:`plan_run` recorded for a Dagster run, for the steps that continue it."""
    run = catalog.run_for_dagster(dagster_run_id)
    if run is None or "to_process" not in run.manifest:
        raise IngestionRunMissingError(f"no ingestion run recorded for Dagster run {dagster_run_id}; "
                                       "materialize source_manifest first")
    data = run.manifest
    return PlannedRun(run.id, Manifest.from_json(data), PolicyRef(**data["policy"]), data["pipeline_version"])


def run_policy(catalog: CatalogStore, dagster_run_id: str | None = None) -> PolicyRef | None:
    """The policy the run of ``dagster_run_id`` pinned, else the newest run's (None before any run)."""
    run = (catalog.run_for_dagster(dagster_run_id) if dagster_run_id else None) or catalog.latest_run()
    return PolicyRef(**run.manifest["policy"]) if run is not None and "policy" in (run.manifest or {}) else None


def run_counts(catalog: CatalogStore, run_id: int) -> RunCounts:
    run = catalog.run(run_id)
    return RunCounts.from_json(run.counts) if run is not None else RunCounts()


def failure_reason(exc: BaseException) -> str:
    """What a run's record says of an exception. Enclave's own messages name ids, paths and types,
    never document text; another library's message might quote a document, so only its class is kept."""
    if isinstance(exc, EnclaveError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} (the message is in the run log only)"


@contextmanager
def failing_run(catalog: CatalogStore, run_id: int | None) -> Iterator[None]:
    """Record the run as failed, with the reason and its duration, when the block raises (then re-raise)."""
    try:
        yield
    except BaseException as exc:
        if run_id is not None:
            catalog.finish_run(run_id, "failed", failure_reason(exc))
        raise


# --- redact: parse + chunk + redact, inside the workers -----------------------------------------


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
                 record_removals: bool = False, vault_key: bytes = b"") -> None:
        from rag.redaction import PresidioRedactor
        from rag.residual import ResidualScanner

        policy = load_policy(policy_ref, Path(policies_dir))
        self.redactor = PresidioRedactor(policy, tenant_key=tenant_key)
        self.redactor.warm_up()
        self.residual = ResidualScanner(policy)
        self.residual.warm_up()
        self.recheck_fraction = recheck_fraction
        self.record_removals = record_removals
        self.tenant_key = tenant_key
        self.vault = VaultCipher(vault_key) if policy.uses_operator("pseudonymise") else None

    def _leave_for_recheck(self, content_hash: str) -> bool:
        """A deterministic sample (by content hash) that the no_residual_pii check scans again."""
        return int(content_hash[:8], 16) < self.recheck_fraction * 0x1_0000_0000

    def _to_fixpoint(self, texts: list[str]) -> tuple[list[tuple[str, Counter[str]]], list[Removals]]:
        """Redact until the detector finds nothing more (at most MAX_PASSES).

        Replacing one value changes the context of its neighbours, so a second pass can see what
        the first could not (a surname once the first name became a placeholder). Each removed
        value's keyed subject key (never the value) is kept in ``self.subjects``, per text.
        """
        out = [(t, Counter[str]()) for t in texts]
        self.subjects: list[set[tuple[str, str]]] = [set() for _ in texts]
        self.pseudonyms: list[dict[str, tuple[str, str, bytes]]] = [{} for _ in texts]
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
                self.subjects[i].update((f.entity_type, subject_key(self.tenant_key, text[f.start:f.end]))
                                        for f in findings)
                if self.vault is not None:
                    self._encrypt_pseudonyms(text, findings, self.pseudonyms[i])
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

    def _encrypt_pseudonyms(self, text: str, findings: list[Finding], into: dict[str, tuple[str, str, bytes]]) -> None:
        """Each value the pseudonymise operator replaces, encrypted for the vault (only ciphertext leaves)."""
        from rag.redaction import merge_findings

        assert self.vault is not None
        policy = self.redactor.policy
        cursor = 0
        for f in merge_findings(findings):  # the spans redact() replaces, in its order
            if f.start < cursor:
                continue
            cursor = f.end
            if policy.operator_for(f.entity_type).kind == "pseudonymise":
                value = text[f.start:f.end]
                token = pseudonym_token(self.tenant_key, f.entity_type, value)
                if token not in into:
                    into[token] = (f.entity_type, subject_key(self.tenant_key, value), self.vault.encrypt(token, value))

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
            for c, (text, counts), subjects, pseudonyms in zip(chunks, redacted[k:k + n], self.subjects[k:k + n],
                                                               self.pseudonyms[k:k + n], strict=True):
                digest = hashlib.sha256(text.encode()).hexdigest()
                # the residual check passed exactly this text here; a sample is scanned again by
                # no_residual_pii in the main process, to catch a worker and the check disagreeing
                stored.append(NewChunk(ordinal=c.ordinal, text=text, content_hash=digest, page=c.page,
                                       entity_counts=dict(counts), pii_checked=not self._leave_for_recheck(digest),
                                       subjects=tuple(sorted(subjects)),
                                       pseudonyms=tuple((t, *v) for t, v in sorted(pseudonyms.items()))))
            out.append(Transformed(stored, removals[k:k + n]) if self.record_removals else stored)
            k += n
        return out


def redaction_transform_factory(policy_ref: str, policies_dir: str, tenant_key: bytes, recheck_fraction: float = 1.0,
                                record_removals: bool = False,
                                vault_key: bytes = b"") -> Callable[[], RedactionTransform]:
    return partial(RedactionTransform, policy_ref, policies_dir, tenant_key, recheck_fraction, record_removals,
                   vault_key)


@dataclass(frozen=True)
class RedactionOptions:
    """How the redaction step runs: parse limits, worker pool, where policies live, the tenant key."""

    limits: ParseLimits
    workers: int
    timeout_s: float
    memory_mb: int
    policies_dir: Path
    tenant_key: bytes = field(repr=False)
    recheck_fraction: float = 1.0
    vault_key: bytes = field(default=b"", repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedactionOptions:
        return cls(limits=ParseLimits.from_settings(settings), workers=settings.parse_workers,
                   timeout_s=settings.parse_timeout_s, memory_mb=settings.parse_memory_mb,
                   policies_dir=settings.policies_dir, tenant_key=settings.tenant_key.get_secret_value().encode(),
                   recheck_fraction=settings.pii_recheck_fraction,
                   vault_key=settings.vault_key.get_secret_value().encode())


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

    def run_fields(self) -> dict[str, Any]:
        """This step's part of :class:`RunCounts`, as stored."""
        return {"documents_written": self.stored, "quarantined": self.quarantined,
                "chunks_written": self.chunks_written, "quarantine_by_reason": dict(self.quarantine_by_reason),
                "entities_removed": dict(self.entities_removed), "bytes_in": self.bytes_in,
                "redact_seconds": round(self.seconds, 3)}


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
                     policy_ref: str | None = None, vault_key: bytes = b"") -> RedactStats:
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
    if not vault_key and policy.uses_operator("pseudonymise"):
        VaultCipher(vault_key)  # refuses here, before any worker starts, naming ENCLAVE_VAULT_KEY
    factory = redaction_transform_factory(ref, str(policies_dir), tenant_key, recheck_fraction, vault_key=vault_key)
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


def redact_run(planned: PlannedRun, connector: Connector, catalog: CatalogStore, options: RedactionOptions,
               on_progress: Callable[[int], None] | None = None) -> RedactStats:
    """Second step: redact the run's new and changed documents under its policy; counts go with the run."""
    policy = planned.policy.load(options.policies_dir)
    stats = redact_documents(
        planned.manifest, connector, catalog, policy, options.limits, planned.version, workers=options.workers,
        timeout_s=options.timeout_s, memory_mb=options.memory_mb, policies_dir=options.policies_dir,
        tenant_key=options.tenant_key, run_id=planned.run_id, on_progress=on_progress,
        recheck_fraction=options.recheck_fraction, policy_ref=planned.policy.file, vault_key=options.vault_key)
    catalog.update_run(planned.run_id, stats.run_fields())
    return stats


# --- check: no residual PII in what was stored ----------------------------------------------------


Detector = Callable[[Sequence[str]], list[list["Finding"]]]


def residual_pii_detector(policy: Policy, tenant_key: bytes) -> Detector:
    """The detector the residual-PII check runs over stored chunk text: rag.residual's patterns and
    vocabulary detector, not the NER that redacted it, so a value one detector misses can still
    stop the run. ``tenant_key`` is unused: the check only finds, it never transforms."""
    from rag.residual import ResidualScanner

    del tenant_key
    return ResidualScanner(policy).scan


@dataclass(frozen=True)
class PiiCheckReport:
    passed: bool
    chunks_checked: int
    chunks_flagged: int = 0
    residual_by_type: Mapping[str, int] = field(default_factory=dict)
    policy_unavailable: str | None = None
    error: str | None = None


def _check_policy(name: str, run_policy: PolicyRef | None, policies_dir: Path) -> Policy:
    """The policy chunks were redacted under: the run's own file (which may live outside
    policies_dir) when the name matches and the file is unchanged, else policies_dir/NAME.yaml."""
    if run_policy is not None and run_policy.name == name:
        policy = load_policy(run_policy.file, policies_dir)
        if policy.content_hash == run_policy.content_hash:
            return policy
    return load_policy(name, policies_dir)


def check_residual_pii(catalog: CatalogStore, policies_dir: Path, tenant_key: bytes,
                       run_policy: PolicyRef | None = None, batch: int = RESCAN_BATCH) -> PiiCheckReport:
    """Scan chunks not yet checked with their policy's detector again; any finding fails (blocks embedding).

    Unchecked are the chunks no redacting worker verified (its last pass over exactly the stored
    text found nothing) plus a content-hash sample of verified ones (ENCLAVE_PII_RECHECK_FRACTION,
    default 0.1; 1.0 re-scans all), so the check still catches a worker and the main process
    disagreeing about the policy.

    A finding here means redaction missed something the detector sees in the redacted text (for
    instance a name that only looks like one once its neighbour was replaced). Failing keeps
    those chunks out of the index until a policy fix and re-run.
    """
    residual: Counter[str] = Counter()
    flagged_chunks = 0
    checked = 0
    detectors: dict[str, Detector] = {}
    while rows := catalog.chunks_unchecked_with_policy(batch):
        clean: list[int] = []
        by_policy: dict[str, list[tuple[int, str]]] = {}
        for chunk_id, text, policy_name in rows:
            by_policy.setdefault(policy_name, []).append((chunk_id, text))
        for policy_name, items in by_policy.items():
            if policy_name not in detectors:
                try:
                    policy = _check_policy(policy_name, run_policy, policies_dir)
                except PolicyInvalidError as exc:
                    # Unverifiable chunks must not reach the index: fail with the reason, not a crash.
                    return PiiCheckReport(passed=False, chunks_checked=checked, policy_unavailable=policy_name,
                                          error=str(exc))
                detectors[policy_name] = residual_pii_detector(policy, tenant_key)
            for (chunk_id, _), findings in zip(items, detectors[policy_name]([t for _, t in items]), strict=True):
                if findings:
                    flagged_chunks += 1
                    residual.update(f.entity_type for f in findings)
                else:
                    clean.append(chunk_id)
        checked += len(rows)
        catalog.mark_checked(clean)
        if len(clean) < len(rows):
            break  # flagged chunks stay unchecked; re-running the check would loop on them
    return PiiCheckReport(passed=flagged_chunks == 0, chunks_checked=checked, chunks_flagged=flagged_chunks,
                          residual_by_type=dict(residual))


# --- embed and publish ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedStats:
    embedded: int
    seconds: float

    def run_fields(self) -> dict[str, Any]:
        return {"chunks_embedded": self.embedded, "embed_seconds": round(self.seconds, 3)}


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


def embed_run(catalog: CatalogStore, embedder: Any, run_id: int | None,
              on_progress: Callable[[int], None] | None = None) -> EmbedStats:
    """Fourth step: embed every chunk without a vector from the current model."""
    stats = embed_chunks(catalog, embedder, on_progress=on_progress)
    if run_id is not None:
        catalog.update_run(run_id, stats.run_fields())
    prepare_query_model(embedder)
    return stats


def prepare_query_model(embedder: Any) -> None:
    """Leave the query service its ONNX question encoder (rag.onnx_query), so its start does not
    export one. Best effort: a service that finds none exports it itself or embeds through torch."""
    prepare = getattr(embedder, "prepare_query_model", None)
    if prepare is None:
        return
    try:
        prepare()
    except Exception as exc:  # noqa: BLE001 - an optional speed-up must not fail an ingestion run
        log.warning("the ONNX question encoder was not exported (%s); the query service will try", type(exc).__name__)


def sync_index(catalog: CatalogStore, index: Any, lexical: Any | None = None) -> IndexReport:
    """Make the vector index (and the BM25 index, when given) hold exactly the catalog's embedded chunks."""
    started = time.perf_counter()
    desired = catalog.embedded_chunk_ids(index.model_id)
    report = index.reconcile(desired, lambda ids: catalog.embeddings_for(ids, index.dim))
    lexical_documents = lexical.sync(catalog, desired) if lexical is not None else 0
    return IndexReport(added=report.added, removed=report.removed, rebuilt=report.rebuilt, vectors=report.total,
                       kind=report.kind, generation=report.generation, lexical_documents=lexical_documents,
                       seconds=time.perf_counter() - started)


def publish_run(catalog: CatalogStore, index: Any, lexical: Any | None, run_id: int | None) -> IndexReport:
    """Fifth step: the FAISS and BM25 indexes hold exactly the catalog's embedded chunks; the run is complete
    (unless the index check after it fails)."""
    report = sync_index(catalog, index, lexical)
    if run_id is not None:
        catalog.update_run(run_id, {"index": asdict(report)})
        catalog.finish_run(run_id, "completed")
    return report


@dataclass(frozen=True)
class IndexCheckReport:
    index_vectors: int
    catalog_chunks: int
    missing_from_index: int
    stale_in_index: int
    chunks_without_embedding: int
    index_version: str

    @property
    def passed(self) -> bool:
        return not (self.missing_from_index or self.stale_in_index or self.chunks_without_embedding)


def check_index(catalog: CatalogStore, index: Any) -> IndexCheckReport:
    """The vectors in the index are exactly the live, embedded chunks of the catalog."""
    in_catalog = set(catalog.embedded_chunk_ids(index.model_id).tolist())
    in_index = set(index.ids().tolist())
    live = set(catalog.live_chunk_ids().tolist())
    return IndexCheckReport(index_vectors=len(in_index), catalog_chunks=len(live),
                            missing_from_index=len(in_catalog - in_index), stale_in_index=len(in_index - in_catalog),
                            chunks_without_embedding=len(live - in_catalog), index_version=index.version)


# --- a whole run, in this process -----------------------------------------------------------------


class IngestionComponents:
    """What ingestion writes to, built once from :class:`~rag.config.Settings`: the catalog (migrated),
    the embedder, the FAISS and BM25 indexes, and the redaction options."""

    def __init__(self, settings: Settings) -> None:
        settings.require_secrets()  # keyed-hash placeholders need a real tenant key in production
        self.settings = settings

    @cached_property
    def catalog(self) -> CatalogStore:
        store = CatalogStore(self.settings.database_url)
        store.migrate()
        return store

    @cached_property
    def embedder(self) -> SentenceTransformerEmbedder:
        from rag.embedding import SentenceTransformerEmbedder

        s = self.settings
        return SentenceTransformerEmbedder(s.embedding_model, s.device, s.embedding_batch_size, s.embedding_precision,
                                           query_models_dir=s.models_dir, query_encoder=s.query_encoder)

    def index(self) -> FaissIndex:
        """The vector index as saved now (each call reads the generation in force)."""
        from rag.index import FaissIndex

        s = self.settings
        return FaissIndex(s.index_dir / "vectors", self.embedder.dimension, self.embedder.model_id,
                          s.exact_index_max, s.device)

    def lexical(self) -> Bm25Index:
        from rag.lexical import Bm25Index

        return Bm25Index(self.settings.index_dir / "bm25")

    @cached_property
    def redaction(self) -> RedactionOptions:
        return RedactionOptions.from_settings(self.settings)

    @property
    def version(self) -> str:
        return pipeline_version(self.redaction.limits)

    def policy(self, policy_ref: str = "") -> PolicyRef:
        """``policy_ref`` (a name or a file), or ENCLAVE_POLICY when empty, pinned to its content hash."""
        return PolicyRef.resolve(policy_ref or self.settings.policy, self.settings.policies_dir)

    def close(self) -> None:
        if "catalog" in self.__dict__:
            self.catalog.dispose()


@dataclass(frozen=True)
class IngestOutcome:
    """How a run ended, with its counts. ``failure`` says why when it did not succeed."""

    success: bool
    run_id: int | None
    counts: RunCounts
    failure: str | None = None
    dagster_run_id: str | None = None


class IngestRunner(Protocol):
    """Runs one ingestion of a directory, or of a source ``declared`` in the sources file (the Dagster
    job registers one under ``enclave.orchestrators``)."""

    def __call__(self, path: str = "", *, source_name: str = "", policy: str = "", groups: Sequence[str] = (),
                 public: bool = False, progress: bool = False, declared: str = "") -> IngestOutcome: ...


ORCHESTRATOR_GROUP = "enclave.orchestrators"


def ingest_runner(name: str = "dagster") -> IngestRunner:
    """The runner registered as ``name`` under ``enclave.orchestrators`` (this package registers the Dagster job)."""
    for entry_point in entry_points(group=ORCHESTRATOR_GROUP, name=name):
        dist = entry_point.dist
        if dist is None or dist.name.replace("_", "-").lower() != "enclave-rag":
            continue  # another package may not take over ingestion by registering the same name
        runner: IngestRunner = entry_point.load()
        return runner
    raise ConfigurationError(f"no ingestion runner {name!r} is registered under {ORCHESTRATOR_GROUP!r}; "
                             "reinstall enclave-rag (pip install -e .) so its entry points are recorded")


def run_ingestion(components: IngestionComponents, connector: Connector, kind: str, location: str,
                  policy_ref: str = "") -> IngestOutcome:
    """Every step in order, in this process: plan, redact, check (blocking), embed, publish, check the index.

    The run is recorded before its first step and ends ``completed`` or ``failed`` with the reason
    and its duration. Enclave's own errors (a source without access rules, an invalid policy) end it
    as a failed outcome; any other exception is recorded and raised.
    """
    catalog = components.catalog
    options = components.redaction
    try:
        policy = components.policy(policy_ref)
    except EnclaveError as exc:
        return IngestOutcome(False, None, RunCounts(), str(exc))
    run_id = start_run(connector, kind, location, catalog, policy, components.version)

    def failed(reason: str) -> IngestOutcome:
        catalog.finish_run(run_id, "failed", reason)
        return IngestOutcome(False, run_id, run_counts(catalog, run_id), reason)

    try:
        with failing_run(catalog, run_id):
            planned = plan_run(run_id, connector, catalog, options.policies_dir)
            redact_run(planned, connector, catalog, options)
            pii = check_residual_pii(catalog, options.policies_dir, options.tenant_key, planned.policy)
            if not pii.passed:
                return failed(f"check no_residual_pii failed: {asdict(pii)}")
            embed_run(catalog, components.embedder, run_id)
            index = components.index()
            publish_run(catalog, index, components.lexical(), run_id)
            consistency = check_index(catalog, index)
            if not consistency.passed:
                return failed(f"check index_matches_catalog failed: {asdict(consistency)}")
    except EnclaveError as exc:
        return IngestOutcome(False, run_id, run_counts(catalog, run_id), str(exc))
    return IngestOutcome(True, run_id, run_counts(catalog, run_id))
