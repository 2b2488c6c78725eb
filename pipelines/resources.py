"""Dagster resources: each wraps one ``rag`` component, built from Enclave's Settings.

Fields left empty fall back to the ``ENCLAVE_*`` environment (rag.config.Settings), so the
same Definitions serve ``dagster dev``, the CLI and the tests.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from rag.catalog.store import CatalogStore
from rag.config import Settings, load_settings
from rag.embedding import SentenceTransformerEmbedder
from rag.index import FaissIndex
from rag.lexical import Bm25Index
from rag.parsing import ParseLimits


class EnclaveResource(dg.ConfigurableResource):  # type: ignore[misc]  # dagster's base is untyped
    """Settings plus the catalog, embedder and indexes they describe, built once per process."""

    home: str = ""
    database_url: str = ""
    device: str = ""
    show_progress: bool = False

    _cache: dict[str, Any] = PrivateAttr(default_factory=dict)

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

    def catalog(self) -> CatalogStore:
        if "catalog" not in self._cache:
            store = CatalogStore(self.settings.database_url)
            store.migrate()
            self._cache["catalog"] = store
        store: CatalogStore = self._cache["catalog"]
        return store

    def embedder(self) -> SentenceTransformerEmbedder:
        if "embedder" not in self._cache:
            s = self.settings
            self._cache["embedder"] = SentenceTransformerEmbedder(s.embedding_model, s.device, s.embedding_batch_size,
                                                                   s.embedding_precision)
        embedder: SentenceTransformerEmbedder = self._cache["embedder"]
        return embedder

    def index(self) -> FaissIndex:
        emb = self.embedder()
        s = self.settings
        return FaissIndex(s.index_dir / "vectors", emb.dimension, emb.model_id, s.exact_index_max, s.device)

    def lexical(self) -> Bm25Index:
        return Bm25Index(self.settings.index_dir / "bm25")

    def parse_limits(self) -> ParseLimits:
        return ParseLimits.from_settings(self.settings)
