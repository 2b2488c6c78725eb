"""Run configuration of the ingestion job: which source, which policy, which default access rule.

A run names either a directory (``path``, with its default access rule here) or a source declared
in the sources file (``declared``: ENCLAVE_SOURCES_FILE), whose declaration says the rest.
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from connectors.base import AccessRule
from connectors.filesystem import FileShareSource  # noqa: F401  # registers the "filesystem" kind
from rag.config import Settings
from rag.errors import ConfigurationError
from rag.plugins import connector_for
from rag.sources import OpenedSource, SourceContext, declared_sources, open_source


class IngestConfig(dg.Config):
    path: str = Field(default="", description="Directory (file share mount) to ingest, when not `declared`.")
    declared: str = Field(default="", description="Name of a source in the sources file (ENCLAVE_SOURCES_FILE); "
                                                  "its declaration gives kind, settings, policy and default access.")
    source_name: str = Field(default="", description="Catalog name of the source; the directory name by default.")
    kind: str = Field(default="filesystem", description="Connector kind.")
    policy: str = Field(default="", description="Redaction policy name or file; ENCLAVE_POLICY by default.")
    groups: list[str] = Field(default_factory=list, description="Default access groups where no .access.json applies.")
    public: bool = Field(default=False, description="Default to public where no .access.json applies.")

    def default_access(self) -> AccessRule | None:
        if self.public:
            return AccessRule(public=True)
        if self.groups:
            return AccessRule(groups=frozenset(self.groups))
        return None

    def source(self, settings: Settings) -> OpenedSource:
        """The connector of this run with the kind, location and policy it is recorded under.

        A plugin kind loads only when listed in ENCLAVE_PLUGINS; a declared source is looked up in
        the sources file, read now (so a step on another host sees the file as it is there)."""
        if self.declared:
            # the file's ${NAME} secrets resolve from this process's environment (the deployment's secrets)
            declaration = declared_sources(settings, os.environ).get(self.declared)
            opened = open_source(declaration, SourceContext.from_settings(settings))
            return opened if not self.policy else OpenedSource(opened.name, opened.kind, opened.location,
                                                               self.policy, opened.connector)
        if not self.path:
            raise ConfigurationError("an ingestion run names a directory (path) or a declared source (declared)")
        connector = connector_for(self.kind, settings.allowed_plugins, root=self.path,
                                  name=self.source_name or None, default_access=self.default_access())
        return OpenedSource(connector.name, self.kind, self.path, self.policy, connector)


def ingest_run_config(**config: object) -> dict[str, object]:
    """The ingestion job's run config for one :class:`IngestConfig` (the two steps that open the source take it)."""
    cfg = IngestConfig(**config).model_dump()  # type: ignore[arg-type]  # validated here, before any run
    return {"ops": {"source_manifest": {"config": cfg}, "redacted_chunks": {"config": cfg}}}
