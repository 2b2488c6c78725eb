"""Run configuration of the ingestion job: which source, which policy, which default access rule."""

from __future__ import annotations

from collections.abc import Collection

import dagster as dg
from pydantic import Field

from connectors.base import AccessRule, Connector
from connectors.filesystem import FileShareSource  # noqa: F401  # registers the "filesystem" kind
from rag.plugins import connector_for


class IngestConfig(dg.Config):
    path: str = Field(description="Directory (file share mount) to ingest.")
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

    def connector(self, allowed_plugins: Collection[str] = ()) -> Connector:
        """The connector of ``kind``; a plugin kind loads only when listed in ``allowed_plugins`` (ENCLAVE_PLUGINS)."""
        return connector_for(self.kind, allowed_plugins, root=self.path, name=self.source_name or None,
                             default_access=self.default_access())
