"""The keyed subject index: which chunks held which data subject, without keeping who the subject is.

Place in the flow: the redacting worker (:class:`rag.ingest.RedactionTransform`) knows each
finding's value for a moment, in memory; it hands :func:`subject_key` of each value to the catalog
with the chunk (``NewChunk.subjects``). ``enclave erase --subject VALUE`` computes the same key
from the value the requester gives and finds every chunk that held it.

The key is an HMAC-SHA256 under the tenant key, domain-separated from the redaction operator's
keyed hash (``<PERSON:1a2b3c4d>``), so the subject index never stores a placeholder's token.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_DOMAIN = b"enclave.subject\x00"


def normalise(value: str) -> str:
    """The form two mentions of one value share: whitespace collapsed, case folded."""
    return " ".join(value.split()).casefold()


def subject_key(tenant_key: bytes, value: str) -> str:
    """HMAC-SHA256 (hex) of the normalised value under the tenant key: same subject, same key."""
    return hmac.new(tenant_key, _DOMAIN + normalise(value).encode("utf-8"), hashlib.sha256).hexdigest()


def placeholder_token(tenant_key: bytes, value: str) -> str:
    """The token the redaction ``hash`` operator writes for this value (``<PERSON:1a2b3c4d>``): the same
    HMAC as :meth:`rag.redaction.PresidioRedactor.keyed_token`, kept in step by a test."""
    return hmac.new(tenant_key, normalise(value).encode("utf-8"), hashlib.sha256).hexdigest()[:8]


# a keyed-hash placeholder <PERSON:1a2b3c4d> or a pseudonym <PERSON_7F3A9C21> (rag.lifecycle.vault)
_KEYED_PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*?)(?::[0-9a-f]{8}|_[0-9A-F]{8})>")


def without_tokens(text: str) -> str:
    """``<PERSON:1a2b3c4d>`` and ``<PERSON_7F3A9C21>`` become ``<PERSON>``: what the audit log keeps of a
    redacted question, so it holds no token that would link a record to a data subject (nothing
    there to erase); retention's ``pseudonymise`` action unlinks chunk text the same way."""
    return _KEYED_PLACEHOLDER.sub(r"<\1>", text)
