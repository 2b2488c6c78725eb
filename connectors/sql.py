"""DatabaseSource: rows of a relational database (any SQLAlchemy URL) as documents.

A declared query returns rows; the rows that share the values of the id column(s) become one
document (a clinical note, a ticket with its comments). Its text is the text columns, or a
template over the row's columns, under an optional title; declared PII columns are dropped or
replaced by a keyed token (HMAC-SHA256 under the tenant key) *before* the text is rendered, so
their values never reach the parser. The uri is ``sql://<source>/<id>[/<id2>...]`` (each id value
percent-encoded), stable across runs; its sha256 is that of the rendered bytes, so an unchanged
row is skipped by the pipeline's hash comparison and a row gone from the query is deleted.

Access comes from a column of the query (``{"groups": [...]}`` / ``{"public": true}`` JSON, a
JSON or database array of group names, or comma-separated names) or from a second query
returning ``(id..., group)`` rows; where neither gives a rule the declaration's default applies,
and where there is none the document has no rule and ingestion refuses the source.

The ``updated_at`` column is the cursor: with a cache file, a scan first reads only ids, change
markers and access values, and fetches and renders only the documents whose marker moved
(see :mod:`connectors.hashcache`). Deletions still come from the complete id set of each scan.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.base import (
    AccessRule,
    ConnectorError,
    DocumentGoneError,
    InvalidAccessRuleError,
    SourceDocument,
    register,
)
from connectors.hashcache import ContentHashCache
from connectors.settings import ConnectorSettings, EnvSecret
from rag.errors import ConfigurationError

log = logging.getLogger(__name__)

_COLUMN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ENTITY = r"^[A-Z][A-Z0-9_]*$"
_TOKEN_HEX = 8  # as the policy's keyed-hash operator (rag.redaction), so tokens can be compared
_IN_BATCH = 500


def _template_fields(template: str) -> list[tuple[str, str | None]]:
    """``[(literal, field or None), ...]`` of a ``str.format``-style template, plain names only.

    Attribute and index access, conversions and format specs are refused: a template is data
    from a configuration file and must not be able to reach into objects.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template does not parse ({exc}); write a literal brace as {{{{ or }}}}") from None
    out: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parsed:
        if field is not None and (not re.match(_COLUMN, field) or spec or conversion):
            raise ValueError(f"template field {{{field}}} must be a plain column name "
                             "(no attributes, indexes, conversions or format specs)")
        out.append((literal, field))
    return out


class PiiColumn(BaseModel):
    """A column that holds personal data: dropped, or replaced by ``<ENTITY:token>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["drop", "pseudonymise"]
    entity: str | None = Field(default=None, pattern=_ENTITY, description=(
        "Label of the token; with the policy's entity name (PERSON, ...) the token equals the one "
        "redaction gives the same value in free text. The column name in upper case by default."))


class SqlSettings(ConnectorSettings):
    """How rows of a query become documents."""

    url: EnvSecret = Field(description="SQLAlchemy URL (postgresql+psycopg://, mysql+pymysql://, sqlite://...); "
                                       "may be ${ENV_VAR}. Never logged.")
    query: str = Field(min_length=1, description="SELECT returning the id, text, title, cursor and access columns. "
                                                 "A literal colon is written \\:.")
    id_columns: list[str] = Field(min_length=1, description="Rows sharing these values form one document.")
    text_columns: list[str] = Field(default_factory=list, description="Rendered in order, one paragraph each.")
    template: str | None = Field(default=None, description="Instead of text_columns: '{column}' placeholders, "
                                                           "rendered once per row.")
    title_column: str | None = None
    updated_at_column: str | None = Field(default=None, description="Change marker (cursor) for incremental scans.")
    access_column: str | None = None
    access_query: str | None = Field(default=None, description="Returns (id columns..., group) rows.")
    pii_columns: dict[str, Literal["drop", "pseudonymise"] | PiiColumn] = Field(default_factory=dict)
    group_order_columns: list[str] = Field(default_factory=list, description=(
        "Order of the rows within one document; without it rows are ordered by their rendered text."))
    document_format: Literal["txt", "md"] = Field(default="txt", description="Picks the parser (plain text, Markdown).")
    fetch_size: int = Field(default=1000, ge=1, le=100_000)

    @field_validator("id_columns", "text_columns", "group_order_columns")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(_COLUMN, name):
                raise ValueError(f"{name!r} is not a plain column name")
        return value

    @field_validator("title_column", "updated_at_column", "access_column")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not re.match(_COLUMN, value):
            raise ValueError(f"{value!r} is not a plain column name")
        return value

    @field_validator("query", "access_query")
    @classmethod
    def _one_statement(cls, value: str | None) -> str | None:
        return value.strip().rstrip(";").strip() if value is not None else None

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            _template_fields(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SqlSettings:
        if bool(self.text_columns) == (self.template is not None):
            raise ValueError("give text_columns or a template (one of them)")
        if self.access_column and self.access_query:
            raise ValueError("give access_column or access_query, not both")
        for name in self.pii_columns:
            if not re.match(_COLUMN, name):
                raise ValueError(f"{name!r} is not a plain column name")
        exposed = set(self.id_columns) | {c for c in (self.updated_at_column, self.access_column) if c}
        if exposed & set(self.pii_columns):
            raise ValueError(f"columns {sorted(exposed & set(self.pii_columns))} are ids, cursor or access and are "
                             "stored as they are; a PII column cannot be one of them (use a surrogate key)")
        return self

    @property
    def rendered_columns(self) -> list[str]:
        if self.template is not None:
            fields = [f for _, f in _template_fields(self.template) if f is not None]
        else:
            fields = list(self.text_columns)
        return list(dict.fromkeys(fields + ([self.title_column] if self.title_column else [])))

    def pii_rule(self, column: str) -> PiiColumn | None:
        rule = self.pii_columns.get(column)
        return PiiColumn(action=rule) if isinstance(rule, str) else rule


def _text(value: Any) -> str:
    """A column value as text: NULL is empty, bytes are UTF-8, dates ISO 8601."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def _id_text(value: Any, column: str, source: str) -> str:
    if value is None or isinstance(value, bytes | bytearray | memoryview):
        raise ConnectorError(f"source {source!r}: the query returned a NULL or binary value in id column "
                             f"{column!r}; ids must be non-null text or numbers")
    return _text(value)


def database_location(settings: SqlSettings) -> str:
    """Where the rows come from, without credentials: ``dialect://host:port/database``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(settings.url.get_secret_value())
    except ArgumentError:
        return "sql://<unparsable url>"
    host = f"{url.host}:{url.port}" if url.port else (url.host or "")
    return f"{url.get_backend_name()}://{host}/{url.database or ''}"


def access_rule_from_value(value: Any) -> AccessRule | None:
    """An access value from a database column as a rule; None when empty. ValueError when unreadable."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
        if value[0] in "[{":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("access value looks like JSON but does not parse") from None
        else:
            value = [g.strip() for g in value.split(",")]
    if isinstance(value, dict):
        return AccessRule.from_json(value)
    if isinstance(value, list | tuple):
        groups = [g for g in value if g not in (None, "")]
        if not groups:
            return None
        if not all(isinstance(g, str) for g in groups):
            raise ValueError("access groups must be names")
        return AccessRule(groups=frozenset(groups))
    raise ValueError(f"access value of type {type(value).__name__} is not a rule")


@register("sql")
class DatabaseSource:
    """Rows of ``settings.query`` as documents. Cheap to build; connects on first use."""

    def __init__(self, settings: SqlSettings | Mapping[str, Any], name: str,
                 default_access: AccessRule | None = None, *, tenant_key: bytes = b"",
                 cache_path: Path | None = None) -> None:
        self.settings = settings if isinstance(settings, SqlSettings) else SqlSettings.model_validate(settings)
        self.name = name
        self.default_access = default_access
        rules = [self.settings.pii_rule(c) for c in self.settings.pii_columns]
        if any(r is not None and r.action == "pseudonymise" for r in rules) and not tenant_key:
            raise ConfigurationError(f"source {name!r} pseudonymises PII columns but no tenant key was given "
                                     "(set ENCLAVE_TENANT_KEY)")
        self._tenant_key = tenant_key
        self._engine: Any = None
        self._template = _template_fields(self.settings.template) if self.settings.template is not None else None
        self._cache = ContentHashCache(cache_path, self._fingerprint()) if cache_path is not None else None
        self._prefix = f"sql://{quote(name, safe='')}/"

    def __repr__(self) -> str:
        return f"DatabaseSource(name={self.name!r}, location={self.location!r})"

    # -- connection -------------------------------------------------------------------------------

    @property
    def location(self) -> str:
        return database_location(self.settings)

    def _connect(self) -> Any:
        if self._engine is None:
            from sqlalchemy import create_engine
            from sqlalchemy.exc import ArgumentError, NoSuchModuleError

            try:
                self._engine = create_engine(self.settings.url.get_secret_value(), pool_pre_ping=True)
            except ArgumentError:
                # SQLAlchemy's message quotes the URL, password included
                raise ConfigurationError(f"source {self.name!r}: settings.url is not a SQLAlchemy URL") from None
            except (NoSuchModuleError, ImportError) as exc:
                raise ConfigurationError(
                    f"source {self.name!r}: the database driver is not installed ({type(exc).__name__}); "
                    "install the extra for it: pip install 'enclave-rag[sql]' (MySQL/MariaDB) or "
                    "'enclave-rag[postgres]' (PostgreSQL)") from None
        return self._engine.connect()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _database_error(self, exc: Exception, doing: str) -> ConnectorError:
        """A typed error naming the failure by class and code only: driver messages may quote row values."""
        orig = getattr(exc, "orig", None)
        code = getattr(orig, "sqlstate", None) or (orig.args[0] if orig is not None and orig.args
                                                   and isinstance(orig.args[0], int) else None)
        what = type(orig).__name__ if orig is not None else type(exc).__name__
        detail = f"{what}, code {code}" if code is not None else what
        return ConnectorError(f"source {self.name!r}: the database failed while {doing} ({detail}); check the "
                              f"source's query and that it returns the columns {self._columns(full=True)}")

    # -- shaping documents ------------------------------------------------------------------------

    def _fingerprint(self) -> str:
        """What besides the rows shapes the rendered bytes: the cache is dropped when it changes."""
        shape = self.settings.model_dump(mode="json", exclude={"url", "access_column", "access_query", "fetch_size"})
        key_id = hmac.new(self._tenant_key, b"enclave sql cache", hashlib.sha256).hexdigest()[:16]
        return hashlib.sha256(json.dumps([shape, key_id], sort_keys=True).encode()).hexdigest()

    def _columns(self, full: bool) -> list[str]:
        s = self.settings
        cols = list(s.id_columns)
        if s.updated_at_column:
            cols.append(s.updated_at_column)
        if s.access_column:
            cols.append(s.access_column)
        if full:
            cols += s.rendered_columns + s.group_order_columns
        return list(dict.fromkeys(cols))

    def _select(self, full: bool, where: Any = None) -> Any:
        from sqlalchemy import column, select, text

        src = text(self.settings.query).columns(*(column(c) for c in self._columns(full))).subquery("src")
        order = [src.c[c] for c in self.settings.id_columns]
        if full:
            order += [src.c[c] for c in self.settings.group_order_columns]
        stmt = select(*(src.c[c] for c in self._columns(full)))
        if where is not None:
            stmt = stmt.where(where(src))
        return stmt.order_by(*order)

    def _uri(self, key: Sequence[str]) -> str:
        return self._prefix + "/".join(quote(k, safe="") for k in key)

    def _key(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(_id_text(row[c], c, self.name) for c in self.settings.id_columns)

    def _protect(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row with PII columns dropped or replaced by keyed tokens, before anything renders it."""
        out = dict(row)
        for column_name in self.settings.pii_columns:
            rule = self.settings.pii_rule(column_name)
            assert rule is not None
            value = out.get(column_name)
            if rule.action == "drop" or value is None or _text(value).strip() == "":
                out[column_name] = None
                continue
            normalised = " ".join(_text(value).split()).casefold()
            token = hmac.new(self._tenant_key, normalised.encode("utf-8"), hashlib.sha256).hexdigest()[:_TOKEN_HEX]
            out[column_name] = f"<{rule.entity or column_name.upper()}:{token}>"
        return out

    def _render_row(self, row: Mapping[str, Any]) -> str:
        if self._template is not None:
            return "".join(literal + (_text(row[field]) if field is not None else "")
                           for literal, field in self._template)
        return "\n\n".join(t for t in (_text(row[c]).strip() for c in self.settings.text_columns) if t)

    def render(self, rows: Sequence[Mapping[str, Any]]) -> bytes:
        """The document of one id: title, then each row's text. Deterministic for the same rows."""
        protected = [self._protect(r) for r in rows]
        parts = [(self._render_row(r), r) for r in protected]
        if not self.settings.group_order_columns:
            parts.sort(key=lambda p: p[0])
        title = ""
        if self.settings.title_column:
            title = next((t for t in (_text(r[self.settings.title_column]).strip() for _, r in parts) if t), "")
        heading = (f"# {title}" if self.settings.document_format == "md" else title) if title else ""
        body = "\n\n".join(p for p, _ in parts if p.strip())
        return ("\n\n".join(x for x in (heading, body) if x) + "\n").encode("utf-8")

    def _marker(self, rows: Sequence[Mapping[str, Any]]) -> str | None:
        """Latest ``updated_at`` and the row count; None (not cacheable) where a row has no timestamp."""
        column_name = self.settings.updated_at_column
        if column_name is None:
            return None
        stamps = [r[column_name] for r in rows]
        if any(s is None for s in stamps):
            return None
        return f"{_text(max(stamps))}|{len(rows)}"

    def _access(self, uri: str, rows: Sequence[Mapping[str, Any]],
                acl: Mapping[str, set[str]] | None) -> AccessRule | None:
        rule: AccessRule | None = None
        if self.settings.access_column:
            try:
                rules = {access_rule_from_value(r[self.settings.access_column]) for r in rows}
            except ValueError as exc:
                raise InvalidAccessRuleError(f"source {self.name!r}: {uri}: {exc}") from None
            if len(rules) > 1:
                raise InvalidAccessRuleError(f"source {self.name!r}: {uri}: the rows of this document disagree on "
                                             "its access rule; make them agree or give an access_query")
            rule = rules.pop()
        elif acl is not None and acl.get(uri):
            rule = AccessRule(groups=frozenset(acl[uri]))
        return rule if rule is not None else self.default_access

    def _access_map(self, conn: Any) -> dict[str, set[str]] | None:
        if self.settings.access_query is None:
            return None
        from sqlalchemy import text

        n = len(self.settings.id_columns)
        acl: dict[str, set[str]] = {}
        for row in conn.execute(text(self.settings.access_query)):
            if len(row) != n + 1:
                raise ConfigurationError(f"source {self.name!r}: access_query must return the {n} id column(s) "
                                         f"and one group column; it returned {len(row)} columns")
            group = row[n]
            if group is None or _text(group).strip() == "":
                continue
            key = tuple(_id_text(v, c, self.name) for v, c in zip(row[:n], self.settings.id_columns, strict=True))
            acl.setdefault(self._uri(key), set()).add(_text(group).strip())
        return acl

    def _groups(self, result: Iterable[Any]) -> Iterator[tuple[tuple[str, ...], list[Mapping[str, Any]]]]:
        """Rows grouped by id, in the query's id order. An id seen twice apart means the database
        orders ids by a collation that equates different values (``'a'`` and ``'A'``)."""
        seen: set[tuple[str, ...]] = set()
        for key, rows in itertools.groupby((r._mapping for r in result), key=self._key):
            if key in seen:
                raise ConnectorError(f"source {self.name!r}: id {self._uri(key)} appears in two places of the "
                                     "ordered result; its id column(s) compare values as equal that differ "
                                     "(a case-insensitive collation?): use a binary collation or another id")
            seen.add(key)
            yield key, list(rows)

    def _document(self, uri: str, data_sha: str, size: int, access: AccessRule | None) -> SourceDocument:
        stem = uri[len(self._prefix):].replace("/", "_")
        return SourceDocument(uri=uri, sha256=data_sha, size=size, access=access,
                              name=f"{stem}.{self.settings.document_format}")

    # -- the Connector protocol -------------------------------------------------------------------

    def scan(self) -> Iterator[SourceDocument]:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            docs, entries = self._scan()
        except SQLAlchemyError as exc:
            raise self._database_error(exc, "listing documents") from None
        if self._cache is not None:
            self._cache.record_scan(entries)
        yield from docs

    def _scan(self) -> tuple[list[SourceDocument], list[tuple[str, str, str, int]]]:
        docs: list[SourceDocument] = []
        entries: list[tuple[str, str, str, int]] = []
        fetched = reused = 0
        with self._connect() as conn:
            acl = self._access_map(conn)
            if self._cache is not None and self.settings.updated_at_column:
                # the cursor: ids, markers and access first; fetch and render only what moved
                listed: list[tuple[tuple[Any, ...], str, str | None, AccessRule | None]] = []
                result = conn.execution_options(stream_results=True, yield_per=self.settings.fetch_size).execute(
                    self._select(full=False))
                for key, rows in self._groups(result):
                    uri = self._uri(key)
                    ids = tuple(rows[0][c] for c in self.settings.id_columns)  # as the database typed them
                    listed.append((ids, uri, self._marker(rows), self._access(uri, rows, acl)))
                known = self._cache.lookup_many([(uri, m) for _, uri, m, _ in listed if m is not None])
                todo = [ids for ids, uri, _, _ in listed if uri not in known]
                fresh = self._render_keys(conn, todo)
                for _key, uri, marker, access in listed:
                    if uri in known:
                        sha, size = known[uri]
                        reused += 1
                    elif uri in fresh:
                        sha, size, marker = fresh[uri]
                        fetched += 1
                    else:
                        continue  # left the query between the two reads: the next scan deletes it
                    docs.append(self._document(uri, sha, size, access))
                    if marker is not None:
                        entries.append((uri, marker, sha, size))
            else:
                result = conn.execution_options(stream_results=True, yield_per=self.settings.fetch_size).execute(
                    self._select(full=True))
                for key, rows in self._groups(result):
                    uri = self._uri(key)
                    data = self.render(rows)
                    sha = hashlib.sha256(data).hexdigest()
                    docs.append(self._document(uri, sha, len(data), self._access(uri, rows, acl)))
                    marker = self._marker(rows)
                    if marker is not None:
                        entries.append((uri, marker, sha, len(data)))
                    fetched += 1
        log.info("sql source scanned", extra={"source": self.name, "documents": len(docs),
                                              "rendered": fetched, "unchanged_by_cursor": reused})
        return docs, entries

    def _render_keys(self, conn: Any, todo: list[tuple[Any, ...]]) -> dict[str, tuple[str, int, str | None]]:
        """Fetch and render the documents with id values ``todo``: ``{uri: (sha256, size, marker)}``."""
        from sqlalchemy import tuple_

        out: dict[str, tuple[str, int, str | None]] = {}
        ids = self.settings.id_columns
        for i in range(0, len(todo), _IN_BATCH):
            batch = todo[i:i + _IN_BATCH]

            def where(src: Any, batch: list[tuple[Any, ...]] = batch) -> Any:
                if len(ids) == 1:
                    return src.c[ids[0]].in_([k[0] for k in batch])
                return tuple_(*(src.c[c] for c in ids)).in_(batch)

            for key, rows in self._groups(conn.execute(self._select(full=True, where=where))):
                data = self.render(rows)
                out[self._uri(key)] = (hashlib.sha256(data).hexdigest(), len(data), self._marker(rows))
        return out

    def read(self, uri: str) -> bytes:
        from sqlalchemy import and_, bindparam
        from sqlalchemy.exc import SQLAlchemyError
        from sqlalchemy.types import NullType

        if not uri.startswith(self._prefix):
            raise DocumentGoneError(f"source {self.name!r}: {uri} is not a document of this source")
        key = [unquote(k) for k in uri[len(self._prefix):].split("/")]
        ids = self.settings.id_columns
        if len(key) != len(ids):
            raise DocumentGoneError(f"source {self.name!r}: {uri} does not name {len(ids)} id value(s)")

        try:
            with self._connect() as conn:
                values: list[Any] = list(key)
                if conn.dialect.name == "sqlite":
                    # SQLite converts text to a column's type only for columns with an affinity
                    # (not for expressions): pass integers as integers
                    values = [int(v) if re.fullmatch(r"-?[1-9][0-9]{0,17}|0", v) else v for v in key]

                def where(src: Any) -> Any:
                    # untyped parameters: the database casts the text to the id column's type (int, uuid...)
                    return and_(*(src.c[c] == bindparam(f"id_{i}", v, type_=NullType())
                                  for i, (c, v) in enumerate(zip(ids, values, strict=True))))

                rows = [r._mapping for r in conn.execute(self._select(full=True, where=where))]
        except SQLAlchemyError as exc:
            raise self._database_error(exc, f"reading {uri}") from None
        if not rows:
            raise DocumentGoneError(f"source {self.name!r}: {uri} is no longer returned by the query")
        data = self.render(rows)
        marker = self._marker(rows)
        if self._cache is not None and marker is not None:
            # keeps the cache true even where a row changed without its updated_at moving
            self._cache.put(uri, marker, hashlib.sha256(data).hexdigest(), len(data))
        return data
