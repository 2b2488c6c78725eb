"""The question encoder as an ONNX graph run by onnxruntime: the query service without torch.

A search embeds one short question. Through torch and ``transformers`` that costs ~5 ms of CPU
and, at start-up, ~4 s of imports (torch, ``transformers``' model code, the SciPy it pulls in).
The same computation, exported once to ONNX (BERT, mean pooling over the attention mask, L2
normalisation) and run by onnxruntime with the model's own ``tokenizer.json`` (the ``tokenizers``
library ``transformers`` itself uses), gives the same vectors (tests: cosine > 0.99999 to the torch
path, the same top hits) for ~3 ms per question, and its imports take a tenth of a second.

Only models of exactly Transformer + mean Pooling (+ Normalize) qualify, as for the light torch
path (:class:`rag.embedding._MeanPoolingQueryEncoder`). Passages are still embedded by
sentence-transformers at ingestion; only the question side runs here.

The export (torch's TorchScript-based ONNX exporter, deterministic: the same weights give the same
bytes) needs torch, ``transformers`` and ``onnx``, which the ingestion side has. It runs after an
ingestion run embeds (:func:`rag.ingest.embed_run`), or at the first service start that finds no
graph for its model. The graph is written to ``ENCLAVE_HOME/models/<model>-<weights sha256
prefix>.onnx`` (0600, by rename, so a reader never sees half a file) with a sidecar naming the
weights it came from and its own sha256, which is checked before the graph is loaded: a graph whose
bytes differ from what the export wrote is not used (the service then exports again or, where it
cannot, falls back to torch).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from connectors.filesystem import file_sha256

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1  # bump when the exported computation changes
OPSET = 17
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def graph_path(models_dir: Path, model_name: str, weights_sha256: str) -> Path:
    return models_dir / f"{model_name}-{weights_sha256[:16]}-q{GRAPH_FORMAT}.onnx"


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def available() -> bool:
    """Whether onnxruntime and ``tokenizers`` can be imported here (the run-time side)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tokenizers"))


def verified(path: Path, weights_sha256: str) -> bool:
    """The graph at ``path`` is the one exported from these weights, byte for byte."""
    try:
        meta = json.loads(_sidecar(path).read_text())
        return (meta.get("format") == GRAPH_FORMAT and meta.get("weights_sha256") == weights_sha256
                and path.is_file() and file_sha256(path) == meta.get("graph_sha256"))
    except (OSError, ValueError, AttributeError):
        return False


def export(model_dir: Path, models_dir: Path, weights_sha256: str) -> Path:
    """Export the question encoder of ``model_dir`` to ONNX under ``models_dir``; returns its path.

    Idempotent: a verified graph for these weights is left as it is.
    """
    path = graph_path(models_dir, model_dir.name, weights_sha256)
    if verified(path, weights_sha256):
        return path
    import torch

    from rag.embedding import _MeanPoolingQueryEncoder

    encoder = _MeanPoolingQueryEncoder(model_dir, "cpu")

    class _Graph(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            tokens = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    sample = encoder.tokenizer(["a question to trace the graph with"], return_tensors="pt")
    args = tuple(sample[name] if name in sample else torch.zeros_like(sample["input_ids"]) for name in _INPUTS)
    models_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, tmp_name = tempfile.mkstemp(dir=models_dir, prefix=".export-", suffix=".onnx")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # the tracer's notes on shape-dependent Python branches in the attention code: the graph
            # is checked against the torch path by the tests (any batch and length), not by them
            warnings.simplefilter("ignore")
            torch.onnx.export(_Graph(encoder.model).eval(), args, str(tmp), input_names=list(_INPUTS),
                              output_names=["embedding"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={name: {0: "batch", 1: "tokens"} for name in _INPUTS})
        tmp.chmod(0o600)
        meta = {"format": GRAPH_FORMAT, "weights_sha256": weights_sha256, "graph_sha256": file_sha256(tmp),
                "model": model_dir.name, "torch": torch.__version__, "opset": OPSET}
        side_tmp = tmp.with_suffix(".json")
        side_tmp.write_text(json.dumps(meta, indent=1))
        side_tmp.chmod(0o600)
        os.replace(tmp, path)
        os.replace(side_tmp, _sidecar(path))
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".json").unlink(missing_ok=True)
    log.info("exported the question encoder of %s to %s", model_dir.name, path.name)
    return path


class OnnxQueryEncoder:
    """Normalised question vectors from the exported graph; one onnxruntime session, ``threads`` threads."""

    def __init__(self, path: Path, model_dir: Path, threads: int = 1) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        bert = json.loads((model_dir / "sentence_bert_config.json").read_text()) \
            if (model_dir / "sentence_bert_config.json").exists() else {}
        self.lower_case = bool(bert.get("do_lower_case", False))
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config = json.loads((model_dir / "tokenizer_config.json").read_text()) \
            if (model_dir / "tokenizer_config.json").exists() else {}
        max_length = int(bert.get("max_seq_length") or config.get("model_max_length") or 512)
        pad_token = str(config.get("pad_token") or "[PAD]")
        pad_id = tokenizer.token_to_id(pad_token)
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding(pad_id=pad_id if pad_id is not None else 0, pad_token=pad_token)
        self.tokenizer = tokenizer
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.dim = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])

    def encode(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch([t.lower() if self.lower_case else t for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                 "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}
        vectors = self.session.run(None, feeds)[0]
        return np.ascontiguousarray(vectors, dtype=np.float32)
