"""The connector contract: how a document source tells Enclave what it holds and who may see it.

A connector is anything with ``scan()`` and ``read(uri)``. ``scan()`` lists every document the
source holds now, each with its content hash and access rule; the pipeline diffs that list
against the catalog, so a connector never needs to remember what it sent before. Built-ins
register by name below; third-party connectors register through the ``enclave.connectors``
entry-point group and are loaded, only when allow-listed, by :func:`rag.plugins.connector_for`
(this layer imports no installed package on its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rag.errors import EnclaveError


class ConnectorError(EnclaveError):
    """A source could not be listed or read. The message names the source and what failed (an error
    class or code), never document text, row values or credentials."""


class InvalidAccessRuleError(ConnectorError):
    """A source declares an access rule for a document, but it does not say who may see it."""


class DocumentUnreadableError(ConnectorError, OSError):
    """One document could not be read. An ``OSError`` too, so ingestion quarantines the document
    (``read_error``) and goes on with the others."""


class DocumentGoneError(DocumentUnreadableError, FileNotFoundError):
    """The document left the source between ``scan()`` and ``read()``; the next scan deletes it."""


@dataclass(frozen=True)
class AccessRule:
    """Who may see a document: members of any of ``groups``, or everyone when ``public``."""

    groups: frozenset[str] = field(default_factory=frozenset)
    public: bool = False

    def __post_init__(self) -> None:
        if not self.public and not self.groups:
            raise ValueError("an access rule names at least one group or is public")

    def admits(self, user_groups: Iterable[str]) -> bool:
        return self.public or not self.groups.isdisjoint(user_groups)

    def to_json(self) -> dict[str, Any]:
        return {"public": True} if self.public else {"groups": sorted(self.groups)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccessRule:
        if data.get("public") is True:
            return cls(public=True)
        groups = data.get("groups")
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise ValueError('access rule must be {"public": true} or {"groups": ["name", ...]}')
        return cls(groups=frozenset(groups))


@dataclass(frozen=True)
class SourceDocument:
    """One document as the source holds it now. ``access`` is None where no rule applies."""

    uri: str
    sha256: str
    size: int
    access: AccessRule | None
    name: str  # file name (or equivalent) used to pick a parser: "report.pdf"


@runtime_checkable
class Connector(Protocol):
    """A document source. ``read`` returns the bytes whose sha256 ``scan`` reported."""

    name: str

    def scan(self) -> Iterable[SourceDocument]: ...

    def read(self, uri: str) -> bytes: ...


ConnectorFactory = Callable[..., Connector]
_BUILT_INS: dict[str, ConnectorFactory] = {}


def register(kind: str) -> Callable[[ConnectorFactory], ConnectorFactory]:
    def wrap(factory: ConnectorFactory) -> ConnectorFactory:
        _BUILT_INS[kind] = factory
        return factory

    return wrap


def registered_kinds() -> frozenset[str]:
    return frozenset(_BUILT_INS)


def connector_for(kind: str, **options: Any) -> Connector:
    """Build a connector of a registered kind (plugins are registered by :func:`rag.plugins.connector_for`)."""
    if kind not in _BUILT_INS:
        known = ", ".join(sorted(_BUILT_INS)) or "none"
        raise KeyError(f"no connector of kind {kind!r} (known: {known})")
    return _BUILT_INS[kind](**options)
