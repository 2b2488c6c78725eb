"""Reversible pseudonymisation: typed pseudonyms, an encrypted vault, and audited re-identification.

- The policy operator ``pseudonymise`` writes ``<PERSON_7F3A9C21>``: an HMAC of the entity type
  and the normalised value under the tenant key, so the same person is the same token across
  documents of a tenant (:func:`pseudonym_token`).
- The redacting worker encrypts each original value under ENCLAVE_VAULT_KEY with AES-GCM
  (``cryptography``; the token is the associated data, so a ciphertext cannot be moved to
  another token) and hands only the ciphertext to the catalog's ``lifecycle_vault`` table.
  Nothing but ciphertext is stored; erasing the subject deletes its entries.
- :meth:`Vault.reveal` (``enclave reveal``, ``POST /v1/reveal``) decrypts one token for a caller
  in a group allowed to re-identify (ENCLAVE_REVEAL_GROUPS) who states a purpose;
  :meth:`Vault.render` turns the tokens of an answer back into originals for the groups allowed
  to see originals (ENCLAVE_ORIGINAL_VIEW_GROUPS), after generation: the model only sees tokens.
  Every reveal and every rendering is an audit record (kind ``reveal``: who, why, which token).
  The record names a token by a keyed reference (:func:`token_ref`), not by the token, so the
  audit log keeps nothing that erasing the subject would have to remove.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select

from rag.errors import AccessDeniedError, ConfigurationError, EnclaveError
from rag.lifecycle.events import append_event
from rag.lifecycle.models import VaultEntry
from rag.lifecycle.subjects import normalise

if TYPE_CHECKING:
    from rag.audit import AuditLog
    from rag.catalog.store import CatalogStore
    from rag.config import Settings

PSEUDONYM = re.compile(r"<([A-Z][A-Z0-9_]*?)_([0-9A-F]{8})>")
_NONCE = 12


def pseudonym_token(tenant_key: bytes, entity: str, value: str) -> str:
    """``PERSON_7F3A9C21``: the same value of the same type gives the same token within a tenant."""
    digest = hmac.new(tenant_key, b"enclave.pseudonym\x00" + entity.encode() + b"\x00" + normalise(value).encode(),
                      hashlib.sha256).hexdigest()
    return f"{entity}_{digest[:8].upper()}"


def token_ref(tenant_key: bytes, token: str) -> str:
    """What audit records name a token by: a keyed reference an auditor holding the token can recompute."""
    return hmac.new(tenant_key, b"enclave.reveal-ref\x00" + token.encode(), hashlib.sha256).hexdigest()[:16]


class VaultCipher:
    """AES-256-GCM under a key derived (HKDF-SHA256) from ENCLAVE_VAULT_KEY; the token is the associated data."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ConfigurationError("pseudonymisation needs ENCLAVE_VAULT_KEY (a secret of at least 32 characters): "
                                     "the vault keeps originals only under that key")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"enclave.vault.v1").derive(secret)
        self._aead = AESGCM(key)

    def encrypt(self, token: str, value: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, value.encode("utf-8"), token.encode())

    def decrypt(self, token: str, blob: bytes) -> str:
        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], token.encode()).decode("utf-8")
        except InvalidTag as exc:
            raise EnclaveError(f"vault entry {token} does not decrypt under ENCLAVE_VAULT_KEY (wrong key, or the "
                               "entry was altered)") from exc


class ReidentificationRefusedError(AccessDeniedError):
    """Re-identification without an allowed group or without a purpose."""


@dataclass(frozen=True)
class Revealed:
    token: str
    value: str | None
    audit_seq: int


def _groups(value: str) -> frozenset[str]:
    return frozenset(g.strip() for g in value.split(",") if g.strip())


class Vault:
    def __init__(self, catalog: CatalogStore, audit: AuditLog, secret: bytes, tenant_key: bytes, *,
                 reveal_groups: Collection[str] = (), view_groups: Collection[str] = ()) -> None:
        self.catalog = catalog
        self.audit = audit
        self._secret = secret
        self._tenant_key = tenant_key
        self.reveal_groups = frozenset(reveal_groups)
        self.view_groups = frozenset(view_groups)

    @classmethod
    def from_settings(cls, settings: Settings, catalog: CatalogStore, audit: AuditLog) -> Vault:
        return cls(catalog, audit, settings.vault_key.get_secret_value().encode(),
                   settings.tenant_key.get_secret_value().encode(),
                   reveal_groups=_groups(settings.reveal_groups), view_groups=_groups(settings.original_view_groups))

    def _lookup(self, tokens: Collection[str]) -> dict[str, str]:
        if not tokens:
            return {}
        cipher = VaultCipher(self._secret)
        with self.catalog.session() as s:
            rows = s.execute(select(VaultEntry.token, VaultEntry.ciphertext).where(VaultEntry.token.in_(list(tokens))))
            return {r.token: cipher.decrypt(r.token, r.ciphertext) for r in rows}

    def reveal(self, token: str, *, user: str, groups: Collection[str], purpose: str, via: str) -> Revealed:
        """The original value of one token, for a caller allowed to re-identify who says why; always audited."""
        token = token.strip().strip("<>")
        event = {"action": "reveal", "token_ref": token_ref(self._tenant_key, token)}
        allowed = bool(self.reveal_groups & set(groups))
        if not allowed or not purpose.strip():
            append_event(self.audit, "reveal", user, {**event, "refused": "no purpose" if allowed else "no role"},
                         via=via, outcome="error", purpose=purpose.strip() or None, groups=tuple(sorted(groups)))
            if not allowed:
                raise ReidentificationRefusedError(
                    f"user {user!r} is in no group allowed to re-identify (ENCLAVE_REVEAL_GROUPS); the refusal is "
                    "audited")
            raise ReidentificationRefusedError("re-identification needs a purpose (--purpose): it is audited")
        value = self._lookup([token]).get(token)
        record = append_event(self.audit, "reveal", user, {**event, "found": value is not None}, via=via,
                              outcome="ok" if value is not None else "no_results", purpose=purpose,
                              groups=tuple(sorted(groups)))
        return Revealed(token, value, record.seq)

    def may_view_originals(self, groups: Collection[str]) -> bool:
        return bool(self.view_groups & set(groups))

    def render(self, texts: list[str], *, user: str, groups: Collection[str], via: str | None,
               request_id: str) -> list[str]:
        """``texts`` with pseudonyms turned back into originals for the groups that may see them, audited;
        unchanged (no vault read, no record) for everyone else."""
        if not self.may_view_originals(groups):
            return texts
        tokens = {f"{m.group(1)}_{m.group(2)}" for t in texts for m in PSEUDONYM.finditer(t)}
        if not tokens:
            return texts
        originals = self._lookup(tokens)
        append_event(self.audit, "reveal", user, {"action": "render", "request_id": request_id,
                                                  "tokens": len(tokens), "rendered": len(originals)},
                     via=via or "unknown", groups=tuple(sorted(groups)))

        def back(m: re.Match[str]) -> str:
            return originals.get(f"{m.group(1)}_{m.group(2)}", m.group(0))

        return [PSEUDONYM.sub(back, t) for t in texts]
