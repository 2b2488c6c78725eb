"""Dagster resources: Enclave's ingestion components (rag.ingest.IngestionComponents), built from Settings.

Fields left empty fall back to the ``ENCLAVE_*`` environment (rag.config.Settings), so the
same Definitions serve ``dagster dev``, the CLI and the tests.
"""

from __future__ import annotations

from functools import cached_property

import dagster as dg
from pydantic import PrivateAttr

from rag.config import Settings, load_settings
from rag.ingest import IngestionComponents


class EnclaveResource(dg.ConfigurableResource):  # type: ignore[type-arg]  # subclassed bare, as dagster documents
    """Settings plus the catalog, embedder and indexes they describe, built once per process."""

    home: str = ""
    database_url: str = ""
    device: str = ""
    show_progress: bool = False

    _components: IngestionComponents | None = PrivateAttr(default=None)

    @cached_property
    def settings(self) -> Settings:
        overrides: dict[str, object] = {}
        if self.home:
            overrides["home"] = self.home
        if self.database_url:
            overrides["database_url"] = self.database_url
        if self.device:
            overrides["device"] = self.device
        return load_settings(**overrides)

    @property
    def components(self) -> IngestionComponents:
        if self._components is None:
            self._components = IngestionComponents(self.settings)
        return self._components
