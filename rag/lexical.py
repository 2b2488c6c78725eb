"""Bm25Index: the lexical half of hybrid retrieval, built with ``bm25s`` over redacted chunk text.

It lives next to the FAISS index and is rebuilt by the ``vector_index`` asset whenever the set of
chunks changes (bm25s has no incremental update; a rebuild of 100k chunks takes seconds), so
ingest and delete keep it in step. Saved like the vector index, through
:class:`~rag.generations.GenerationDirectory`: a new generation directory, then one manifest
switched atomically.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import Stemmer

from rag.generations import GenerationDirectory
from rag.redaction import PLACEHOLDER

_STEMMER = Stemmer.Stemmer("english")
_LOAD_ATTEMPTS = 5
_MASK_CACHE = 64
# Redaction placeholders (<PERSON>, <PERSON:1a2b3c4d>) are not words of the document: indexed as
# terms, every redacted question would match every redacted chunk. PLACEHOLDER is redaction's own
# pattern of what it writes.


def _tokenize(texts: list[str], as_strings: bool = False) -> Any:
    texts = [PLACEHOLDER.sub(" ", t) for t in texts]
    return bm25s.tokenize(texts, stopwords="en", stemmer=_STEMMER, show_progress=False, return_ids=not as_strings)


class Bm25Index:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._generations = GenerationDirectory(self.directory)
        self._lock = threading.Lock()
        self._model: Any = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._digest = ""
        self._loaded_path = ""
        self._masks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _load(self) -> None:
        for _ in range(_LOAD_ATTEMPTS):
            manifest = self._generations.manifest()
            if manifest is None or manifest["path"] == self._loaded_path:
                return
            gen = self._generations.path(manifest)
            try:
                ids = np.load(gen / "ids.npy")
                model = bm25s.BM25.load(str(gen / "bm25"), mmap=False) if len(ids) else None
            except FileNotFoundError:
                # removed by a newer publish after the manifest was read: read the newer one
                if self._generations.manifest() == manifest:
                    raise
                continue
            self._model, self._ids, self._digest, self._loaded_path = model, ids, manifest["digest"], manifest["path"]
            self._masks.clear()
            return

    def _mask(self, allowed_ids: np.ndarray) -> np.ndarray:
        """The weight mask of ``allowed_ids``, cached per array (the same object per group set and access epoch)."""
        cached = self._masks.get(id(allowed_ids))
        if cached is not None and cached[0] is allowed_ids:
            return cached[1]
        mask = np.isin(self._ids, np.asarray(allowed_ids, dtype=np.int64)).astype(np.float32)
        if len(self._masks) >= _MASK_CACHE:
            self._masks.pop(next(iter(self._masks)))
        self._masks[id(allowed_ids)] = (allowed_ids, mask)
        return mask

    def sync(self, catalog: Any, ids: np.ndarray) -> int:
        """Rebuild from the catalog's texts of ``ids`` unless the saved index already holds exactly them."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        digest = hashlib.sha256(ids.tobytes()).hexdigest()
        with self._lock:
            manifest = self._generations.manifest()
            if manifest is not None and manifest["digest"] == digest:
                return len(ids)
            views = catalog.chunk_views(ids.tolist())
            ids = np.array([i for i in ids if int(i) in views], dtype=np.int64)
            texts = [views[int(i)].text for i in ids]

            def write(gen_dir: Path) -> dict[str, Any]:
                if len(ids):
                    model = bm25s.BM25()
                    model.index(_tokenize(texts), show_progress=False)
                    model.save(str(gen_dir / "bm25"), show_progress=False)
                np.save(gen_dir / "ids.npy", ids)
                return {"digest": digest, "documents": len(ids)}

            self._generations.publish(write)
            return len(ids)

    def ids(self) -> np.ndarray:
        """The chunk ids the saved generation indexes (erasure counts its postings by them)."""
        with self._lock:
            self._load()
            return np.array(self._ids, dtype=np.int64)

    def search(self, query: str, k: int, allowed_ids: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Top-k (chunk id, score), over ``allowed_ids`` only when given (filter before ranking)."""
        with self._lock:
            self._load()
            if self._model is None or k <= 0:
                return []
            mask = None
            if allowed_ids is not None:
                mask = self._mask(allowed_ids)
                if not mask.any():
                    return []
            tokens = [t for t in _tokenize([query], as_strings=True)[0] if t in self._model.vocab_dict]
            if not tokens:
                return []
            k = min(k, len(self._ids))
            docs, scores = self._model.retrieve([tokens], k=k, show_progress=False, weight_mask=mask,
                                                  n_threads=0)  # 0: in this thread (1 starts a pool per call)
            out = []
            for pos, score in zip(docs[0], scores[0], strict=True):
                if score > 0 and (mask is None or mask[int(pos)] > 0):
                    out.append((int(self._ids[int(pos)]), float(score)))
            return out
