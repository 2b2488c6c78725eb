"""Enclave's one error hierarchy: each message says what happened and what to do.

Messages never carry document text, a question or an answer: they name ids, paths and types.
"""

from __future__ import annotations

from enum import StrEnum


class EnclaveError(Exception):
    """Base of every error Enclave raises on purpose."""


class ConfigurationError(EnclaveError):
    """A setting is missing or invalid."""


class SourcesInvalidError(ConfigurationError):
    """A source declaration file (sources.yaml) does not match the schema, or names an unknown source."""


class MissingExtraError(EnclaveError):
    """An optional dependency is needed but not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed; install it with: pip install 'enclave-rag[{extra}]'")


class PolicyInvalidError(EnclaveError):
    """A redaction policy file does not match the schema."""


class AccessRuleMissingError(EnclaveError):
    """Deny by default: a document has no access rule, so it is not ingested."""


class AccessDeniedError(EnclaveError):
    """The caller is not allowed to do this."""


class AuthenticationError(EnclaveError):
    """The request carries no verified identity."""


class AuditIntegrityError(EnclaveError):
    """The audit chain does not verify."""


class IndexIntegrityError(EnclaveError):
    """The vector index and the catalog disagree."""


class RequestFailedError(EnclaveError):
    """A search or answer failed inside the engine; the failure is already in the audit log.

    The message names the request id and the failing step's error type, never its text (a
    library's message may quote the input).
    """

    def __init__(self, request_id: str, error_type: str) -> None:
        super().__init__(f"request {request_id} failed ({error_type}); the failure is audited under that id")
        self.request_id = request_id
        self.error_type = error_type


class GenerationError(EnclaveError):
    """The model failed, timed out, or returned an invalid answer."""


class QuarantineReason(StrEnum):
    """Why a file was not ingested. Stored in the catalog's quarantine table."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    DECOMPRESSION_BOMB = "decompression_bomb"
    ENCRYPTED = "encrypted"
    CORRUPT = "corrupt"
    UNSUPPORTED = "unsupported"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    NO_TEXT = "no_text"
    READ_ERROR = "read_error"
    REDACTION_FAILED = "redaction_failed"
    RESIDUAL_PII = "residual_pii"  # the independent residual check still saw personal data after redaction
    ERASED = "erased"  # erased on request (rag.lifecycle): not ingested again while the file is unchanged


class QuarantinedError(EnclaveError):
    """A file could not be ingested; it is recorded in quarantine with a typed reason."""

    def __init__(self, reason: QuarantineReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
