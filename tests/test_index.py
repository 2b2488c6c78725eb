from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rag.errors import ConfigurationError
from rag.index import MANIFEST, FaissIndex, faiss_build

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


def test_the_installed_faiss_build_is_named() -> None:
    import faiss

    build = faiss_build()
    assert (build.kind, build.version) == ("cpu", faiss.__version__)
    assert build.distribution.startswith("faiss-cpu ")
    assert build.describe().startswith(f"faiss {faiss.__version__} (cpu build, from faiss-cpu ")


@pytest.fixture
def fresh_build_check() -> Iterator[None]:
    faiss_build.cache_clear()
    yield
    faiss_build.cache_clear()


def test_two_faiss_builds_installed_over_each_other_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 fresh_build_check: None) -> None:
    # a second distribution of the faiss module, as `pip install '.[gpu]'` over faiss-cpu would leave it
    dist_info = tmp_path / "site" / "faiss_gpu_cu12-1.14.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: faiss-gpu-cu12\nVersion: 1.14.1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ConfigurationError, match=r"faiss-cpu \S+ and faiss-gpu-cu12 1.14.1 are installed"):
        _index(tmp_path)
    assert not (tmp_path / "idx").exists()


def test_without_faiss_the_error_names_the_extras_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             fresh_build_check: None) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # what an install without either extra looks like
    with pytest.raises(ConfigurationError, match=r"enclave-rag\[cpu\].*enclave-rag\[gpu\]"):
        _index(tmp_path)
