from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag.index import MANIFEST, FaissIndex

DIM = 16


def _vectors(ids: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(10_000, DIM)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    return table[np.asarray(ids) % 10_000]


def _index(tmp_path: Path, exact_max: int = 1000) -> FaissIndex:
    return FaissIndex(tmp_path / "idx", DIM, "model@x", exact_max=exact_max, device="cpu")


def test_reconcile_adds_and_removes_to_match_the_catalog(tmp_path: Path) -> None:
    idx = _index(tmp_path)
    idx.reconcile(np.arange(1, 101), _vectors)
    report = idx.reconcile(np.arange(51, 151), _vectors)
    assert (report.added, report.removed) == (50, 50)
    assert idx.ids().tolist() == list(range(51, 151))


def test_reconcile_of_an_unchanged_set_writes_no_new_generation(tmp_path: Path) -> None:
    idx = _index(tmp_path)
    idx.reconcile(np.arange(1, 50), _vectors)
    gen = idx.generation
    report = idx.reconcile(np.arange(1, 50), _vectors)
    assert (report.added, report.removed, idx.generation) == (0, 0, gen)


def test_search_never_returns_ids_outside_the_allowed_set(tmp_path: Path) -> None:
    idx = _index(tmp_path)
    idx.reconcile(np.arange(1, 501), _vectors)
    allowed = np.arange(1, 501, 7)
    for q in range(20):
        _, ids = idx.search(_vectors(np.array([q + 1])), 10, allowed_ids=allowed)
        assert set(ids[0][ids[0] >= 0].tolist()) <= set(allowed.tolist())


def test_empty_allowed_set_returns_nothing(tmp_path: Path) -> None:
    idx = _index(tmp_path)
    idx.reconcile(np.arange(1, 20), _vectors)
    _, ids = idx.search(_vectors(np.array([1])), 5, allowed_ids=np.array([], dtype=np.int64))
    assert ids.size == 0


def test_exact_search_finds_the_query_vector_itself(tmp_path: Path) -> None:
    idx = _index(tmp_path)
    idx.reconcile(np.arange(1, 301), _vectors)
    _, ids = idx.search(_vectors(np.array([123])), 1)
    assert ids[0][0] == 123


def test_past_the_exact_limit_the_index_becomes_hnsw_and_deletes_by_tombstone(tmp_path: Path) -> None:
    idx = _index(tmp_path, exact_max=200)
    idx.reconcile(np.arange(1, 401), _vectors)
    assert idx.kind == "hnsw"
    idx.reconcile(np.arange(1, 381), _vectors)  # 20 removed: tombstoned, below the rebuild fraction
    assert len(idx) == 380 and 390 not in idx.ids()
    _, ids = idx.search(_vectors(np.array([390])), 5)
    assert 390 not in ids[0]
    reloaded = _index(tmp_path, exact_max=200)
    assert reloaded.ids().tolist() == list(range(1, 381))


def test_many_deletions_rebuild_the_index_without_tombstones(tmp_path: Path) -> None:
    idx = _index(tmp_path, exact_max=200)
    idx.reconcile(np.arange(1, 401), _vectors)
    report = idx.reconcile(np.arange(1, 251), _vectors)
    assert report.rebuilt and len(idx) == 250


def test_a_crash_before_the_manifest_switch_leaves_the_previous_generation(tmp_path: Path) -> None:
    idx = _index(tmp_path)
    idx.reconcile(np.arange(1, 11), _vectors)
    # a half-written next generation, as a crash during save would leave it
    junk = tmp_path / "idx" / f"gen-{idx.generation + 1:08d}"
    junk.mkdir()
    (junk / "index.faiss").write_bytes(b"partial")
    (tmp_path / "idx" / (MANIFEST + ".tmp")).write_text("{")
    reloaded = _index(tmp_path)
    assert reloaded.ids().tolist() == list(range(1, 11))
    reloaded.reconcile(np.arange(1, 12), _vectors)
    assert _index(tmp_path).ids().tolist() == list(range(1, 12))


def test_index_of_another_model_is_not_reused(tmp_path: Path) -> None:
    idx = _index(tmp_path)
    idx.reconcile(np.arange(1, 11), _vectors)
    other = FaissIndex(tmp_path / "idx", DIM, "other-model@y", device="cpu")
    assert len(other) == 0


@pytest.mark.gpu
def test_gpu_search_matches_cpu_search(tmp_path: Path) -> None:
    from rag.index import gpu_count

    if gpu_count() == 0:
        pytest.skip("no CUDA GPU visible to faiss")
    cpu = _index(tmp_path)
    cpu.reconcile(np.arange(1, 1001), _vectors)
    gpu = FaissIndex(tmp_path / "idx", DIM, "model@x", device="cuda")
    q = _vectors(np.arange(5))
    assert (cpu.search(q, 5)[1] == gpu.search(q, 5)[1]).all()
