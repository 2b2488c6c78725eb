"""Source declarations: ``sources.yaml`` read, validated, and turned into connectors.

A declaration names a source (its catalog name), its connector ``kind`` with that kind's
settings, the redaction policy its documents are ingested under, and the default access rule for
documents the source gives no rule. The file is data; :class:`SourcesFile` (pydantic) is its
schema (``infra/sources.schema.json`` is generated from it: ``python -m rag.sources``), and
:func:`open_connector` builds the connector of one declaration. Callers (the CLI, the Dagster
schedule and sensor) open each source on its own, so one that fails to open or scan is reported
with its typed error while the others go on.

Secrets stay out of the file: ``url``, ``endpoint_url`` and key fields may say ``${NAME}``,
replaced from the environment mapping the caller passes to :func:`load_sources`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from connectors.base import AccessRule, Connector
from connectors.filesystem import FileShareSettings, FileShareSource
from connectors.s3 import ObjectStoreSource, S3Settings
from connectors.sql import DatabaseSource, SqlSettings, database_location
from rag.errors import PolicyInvalidError, SourcesInvalidError
from rag.plugins import connector_for

BUILT_IN_KINDS = ("filesystem", "sql", "s3")
_SOURCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "infra" / "sources.schema.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccessDeclaration(_Strict):
    """``{groups: [a, b]}`` or ``{public: true}``."""

    groups: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    public: bool = False

    @model_validator(mode="after")
    def _one(self) -> AccessDeclaration:
        if self.public == bool(self.groups):
            raise ValueError("an access rule names at least one group, or is public (not both)")
        return self

    def rule(self) -> AccessRule:
        return AccessRule(public=True) if self.public else AccessRule(groups=frozenset(self.groups))


class _Declaration(_Strict):
    name: str = Field(pattern=_SOURCE_NAME, description="Catalog name of the source; unique in the file.")
    description: str = ""
    policy: str | None = Field(default=None, description="Redaction policy (name in policies/ or a file); "
                                                         "ENCLAVE_POLICY when absent.")
    default_access: AccessDeclaration | None = Field(default=None, description=(
        "Rule for documents the source gives none; without it such documents are refused."))

    def default_rule(self) -> AccessRule | None:
        return self.default_access.rule() if self.default_access is not None else None


class FileShareDeclaration(_Declaration):
    kind: Literal["filesystem"]
    settings: FileShareSettings

    @property
    def location(self) -> str:
        return str(self.settings.root)


class DatabaseDeclaration(_Declaration):
    kind: Literal["sql"]
    settings: SqlSettings

    @property
    def location(self) -> str:
        return database_location(self.settings)


class ObjectStoreDeclaration(_Declaration):
    kind: Literal["s3"]
    settings: S3Settings

    @property
    def location(self) -> str:
        return ObjectStoreSource(self.settings, self.name).location


class PluginDeclaration(_Declaration):
    """A connector registered by another package under the ``enclave.connectors`` entry points;
    its factory receives ``name``, ``default_access`` and the settings as keyword arguments."""

    kind: str = Field(pattern=r"^[A-Za-z0-9_.-]+$",
                      json_schema_extra={"not": {"enum": list(BUILT_IN_KINDS)}})
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        if kind in BUILT_IN_KINDS:
            raise ValueError(f"kind {kind!r} is built in")
        if not any(ep.name == kind for ep in entry_points(group="enclave.connectors")):
            raise ValueError(f"no connector of kind {kind!r} (built in: {', '.join(BUILT_IN_KINDS)}; others "
                             "come from packages registering an 'enclave.connectors' entry point)")
        return kind

    @property
    def location(self) -> str:
        return f"{self.kind}:{self.name}"


def _kind_tag(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if kind in BUILT_IN_KINDS else "plugin"


Declaration = FileShareDeclaration | DatabaseDeclaration | ObjectStoreDeclaration | PluginDeclaration
SourceDeclaration = Annotated[
    Annotated[FileShareDeclaration, Tag("filesystem")]
    | Annotated[DatabaseDeclaration, Tag("sql")]
    | Annotated[ObjectStoreDeclaration, Tag("s3")]
    | Annotated[PluginDeclaration, Tag("plugin")],
    Discriminator(_kind_tag),
]


class SourcesFile(_Strict):
    """The schema of ``sources.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Enclave sources")

    version: Literal[1] = 1
    sources: list[SourceDeclaration] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _unique(cls, sources: list[Any]) -> list[Any]:
        names = [s.name for s in sources]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"source names must be unique; repeated: {', '.join(twice)}")
        return sources

    def get(self, name: str) -> Declaration:
        for source in self.sources:
            if source.name == name:
                return source
        raise SourcesInvalidError(f"no source named {name!r} is declared (declared: "
                                  f"{', '.join(s.name for s in self.sources)})")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]


# -- reading -----------------------------------------------------------------------------------------


def parse_sources(data: bytes, origin: str = "<bytes>", *, environ: Mapping[str, str] | None = None,
                  policies_dir: Path | None = None) -> SourcesFile:
    """Validate ``sources.yaml`` bytes. ``environ`` resolves ``${NAME}`` references in secret fields;
    with ``policies_dir`` every named policy must load too. Raises :class:`SourcesInvalidError`
    whose message names the field at fault, never a value (a value could be a secret)."""
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SourcesInvalidError(f"sources file {origin} is not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise SourcesInvalidError(f"sources file {origin} must be a mapping with a 'sources' list")
    try:
        model = SourcesFile.model_validate(raw, context={"environ": environ} if environ is not None else None)
    except ValidationError as exc:
        problems = "; ".join(f"{_location(raw, err['loc'])}: {err['msg']}" for err in exc.errors())
        raise SourcesInvalidError(f"sources file {origin} violates the schema ({problems}); "
                                  "see infra/sources.schema.json") from None
    if policies_dir is not None:
        from rag.policy import load_policy

        for source in model.sources:
            if source.policy is not None:
                try:
                    load_policy(source.policy, policies_dir)
                except PolicyInvalidError as exc:
                    raise SourcesInvalidError(f"source {source.name!r} in {origin}: {exc}") from None
    return model


def _location(raw: Any, loc: tuple[int | str, ...]) -> str:
    """``sources[1](clinical-notes).settings.url`` from a pydantic error location."""
    parts: list[str] = []
    node = raw
    for step in loc:
        if isinstance(step, int):
            parts.append(f"[{step}]")
            node = node[step] if isinstance(node, list) and step < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                parts.append(f"({node['name']})")
        elif step in BUILT_IN_KINDS or step == "plugin":
            continue  # the discriminator's tag, not a key of the file
        else:
            parts.append(f".{step}" if parts else str(step))
            node = node.get(step) if isinstance(node, dict) else None
    return "".join(parts) or "<root>"


def load_sources(path: Path, *, environ: Mapping[str, str] | None = None,
                 policies_dir: Path | None = None) -> SourcesFile:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SourcesInvalidError(f"sources file {path} cannot be read ({type(exc).__name__})") from None
    return parse_sources(data, str(path), environ=environ, policies_dir=policies_dir)


# -- connectors ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceContext:
    """What a connector needs besides its declaration: the tenant key (pseudonymised columns) and a
    directory for the sources' hash caches (``ENCLAVE_HOME/sources``); None disables the caches."""

    tenant_key: bytes = b""
    state_dir: Path | None = None
    # entry-point connectors that may load (ENCLAVE_PLUGINS): an unlisted one is refused unimported
    allowed_plugins: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Any) -> SourceContext:
        return cls(tenant_key=settings.tenant_key.get_secret_value().encode(), state_dir=settings.home / "sources",
                   allowed_plugins=settings.allowed_plugins)

    def cache_path(self, source_name: str) -> Path | None:
        return self.state_dir / f"{source_name}.hashes.sqlite" if self.state_dir is not None else None


def open_connector(source: Declaration, context: SourceContext) -> Connector:
    """The connector of one declaration. Cheap: nothing connects until ``scan()`` or ``read()``."""
    default = source.default_rule()
    if isinstance(source, FileShareDeclaration):
        return FileShareSource(source.settings.root, name=source.name, default_access=default)
    if isinstance(source, DatabaseDeclaration):
        return DatabaseSource(source.settings, source.name, default, tenant_key=context.tenant_key,
                              cache_path=context.cache_path(source.name))
    if isinstance(source, ObjectStoreDeclaration):
        return ObjectStoreSource(source.settings, source.name, default, cache_path=context.cache_path(source.name))
    return connector_for(source.kind, context.allowed_plugins, name=source.name, default_access=default,
                         **source.settings)


@dataclass(frozen=True)
class OpenedSource:
    """One declared source ready to ingest: its connector and what the run records of it."""

    name: str
    kind: str
    location: str
    policy: str  # "" means ENCLAVE_POLICY
    connector: Connector


def declared_sources(settings: Any, environ: Mapping[str, str]) -> SourcesFile:
    """The sources file the settings name (ENCLAVE_SOURCES_FILE), validated; a typed error without one."""
    if settings.sources_file is None:
        raise SourcesInvalidError("no sources file is configured: set ENCLAVE_SOURCES_FILE to a sources.yaml "
                                  "(infra/sources.example.yaml shows one)")
    return load_sources(settings.sources_file, environ=environ, policies_dir=settings.policies_dir)


def open_source(source: Declaration, context: SourceContext) -> OpenedSource:
    """The connector of one declaration with its kind, location and policy (cheap: nothing connects yet)."""
    return OpenedSource(source.name, source.kind, source.location, source.policy or "",
                        open_connector(source, context))


# -- schema ---------------------------------------------------------------------------------------------


def sources_json_schema() -> dict[str, Any]:
    """The JSON schema of sources files (what ``infra/sources.schema.json`` holds)."""
    return SourcesFile.model_json_schema()


def write_schema(path: Path = SCHEMA_PATH) -> None:
    """Regenerate ``infra/sources.schema.json`` (``python -m rag.sources``)."""
    path.write_text(json.dumps(sources_json_schema(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_schema()
