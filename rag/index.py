"""FaissIndex: the vector index of chunk embeddings, kept in step with the catalog.

- Ids are catalog chunk ids (``IndexIDMap2``), so the index can be reconciled against the
  catalog at any time: ``reconcile`` adds what the catalog has and the index lacks, and removes
  what the index has and the catalog no longer holds.
- Exact inner-product search while the index is small; HNSW past ``exact_max`` vectors
  (see bench/index_scale.py for where the crossover was measured).
- Deletion: exact CPU indexes ``remove_ids``; HNSW and GPU indexes cannot, so removed ids become
  tombstones that search filters out, and the index is rebuilt once tombstones pass a quarter.
- Saving is atomic (:class:`~rag.generations.GenerationDirectory`): a new generation directory
  is written and fsynced, then one manifest file is switched with ``os.replace``. A crash leaves
  the previous generation in force; since the catalog is the state of record, the next
  reconcile converges either way.
- Files are always saved in CPU form; GPU resources are used for search when
  ``faiss.get_num_gpus() > 0`` and the device allows.
- faiss comes from exactly one of the extras ``cpu`` (faiss-cpu) or ``gpu`` (faiss-gpu-cu12):
  :func:`faiss_build` names the build in use and refuses a missing faiss or both installed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import ConfigurationError, IndexIntegrityError
from rag.generations import MANIFEST, GenerationDirectory

__all__ = ["FAISS_DISTRIBUTIONS", "MANIFEST", "FaissBuild", "FaissIndex", "ReconcileReport", "faiss_build",
           "gpu_count"]

# The pip distributions that install the `faiss` module, by the build they carry. Installed
# together they overwrite each other's files: the extras `cpu` and `gpu` install exactly one.
FAISS_DISTRIBUTIONS = {"faiss-cpu": "cpu", "faiss-gpu-cu12": "gpu", "faiss-gpu-cu11": "gpu", "faiss-gpu": "gpu"}
_INSTALL_HINT = ("install exactly one index backend: pip install 'enclave-rag[cpu]', or on a CUDA 12 host "
                 "'enclave-rag[gpu]' (see the README)")


def _faiss() -> Any:
    """The faiss module, or a ConfigurationError naming the extras that install it."""
    try:
        return importlib.import_module("faiss")
    except ImportError as exc:
        raise ConfigurationError(f"faiss is not installed: {_INSTALL_HINT}") from exc


@dataclass(frozen=True)
class FaissBuild:
    """Which faiss this process runs: ``cpu`` or ``gpu``, its version, and the distribution that installed it."""

    kind: str
    version: str
    distribution: str

    def describe(self) -> str:
        return f"faiss {self.version} ({self.kind} build, from {self.distribution})"


def _installed(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


@functools.cache
def faiss_build() -> FaissBuild:
    """The installed faiss build; refuses a missing faiss and two builds installed over each other."""
    module = _faiss()
    present = {name: v for name in FAISS_DISTRIBUTIONS if (v := _installed(name)) is not None}
    if len(present) > 1:
        both = " and ".join(f"{name} {v}" for name, v in sorted(present.items()))
        raise ConfigurationError(f"{both} are installed and overwrite each other's faiss module; uninstall all "
                                 f"of them, then {_INSTALL_HINT}")
    kind = "gpu" if hasattr(module, "StandardGpuResources") else "cpu"
    if not present:  # built from source or installed by conda: name the module's own build
        return FaissBuild(kind, str(module.__version__), "a faiss not installed by pip")
    [(name, dist_version)] = present.items()
    return FaissBuild(kind, str(module.__version__), f"{name} {dist_version}")

TOMBSTONE_REBUILD_FRACTION = 0.25
_LOAD_ATTEMPTS = 5
_SELECTOR_CACHE = 256
_NOTHING_ALLOWED: Any = object()


def _version_of(manifest: dict[str, Any] | None) -> str:
    if manifest is None:
        return "empty"
    return f"gen-{manifest['generation']}:{manifest['index_sha256'][:16]}"


HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128


@dataclass(frozen=True)
class ReconcileReport:
    added: int
    removed: int
    rebuilt: bool
    total: int
    kind: str
    generation: int


def gpu_count() -> int:
    get = getattr(_faiss(), "get_num_gpus", None)
    return int(get()) if get is not None else 0


class FaissIndex:
    def __init__(self, directory: Path, dim: int, model_id: str, exact_max: int = 100_000,
                 device: str = "auto", search_threads: int | None = None) -> None:
        self.directory = Path(directory)
        self._generations = GenerationDirectory(self.directory)
        # OpenMP threads for search(), None for faiss's default. The thread count is an OpenMP
        # setting of the calling thread, so it is applied on every search, in the thread that
        # searches (a server's worker threads never see one set at start-up).
        self.search_threads = search_threads
        self.dim = dim
        self.model_id = model_id
        self.exact_max = exact_max
        self.device = device
        self.build = faiss_build()  # refuses a missing or doubly installed faiss, before any file is read
        self._faiss = _faiss()
        self.generation = 0
        self.kind = "flat"
        self._index: Any = self._empty("flat")
        self._tombstones: set[int] = set()
        self._gpu_index: Any = None
        self._lock = threading.RLock()
        self._refreshing = threading.Lock()
        self._loaded_version = "empty"
        # Search parameters (with their IDSelector) per allowed-id array: building a selector
        # hashes every allowed id (64 ms at 1M ids, bench/RESULTS.md), the array is the same
        # object for every request of one group set until access changes (rag.retrieval.AccessMap).
        self._selectors: dict[int, tuple[np.ndarray, Any, Any]] = {}
        self.load()

    # --- construction ---------------------------------------------------------------------------

    def _empty(self, kind: str) -> Any:
        base: Any
        if kind == "hnsw":
            base = self._faiss.IndexHNSWFlat(self.dim, HNSW_M, self._faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            base.hnsw.efSearch = HNSW_EF_SEARCH
        else:
            base = self._faiss.IndexFlatIP(self.dim)
        return self._faiss.IndexIDMap2(base)

    def _use_gpu(self) -> bool:
        return self.device != "cpu" and gpu_count() > 0

    # --- persistence ----------------------------------------------------------------------------

    def load(self) -> None:
        """Put the generation in force into memory (a no-op when none is published yet).

        Safe while other threads search: the new index is read first, then swapped in under the
        lock. A generation removed by a newer publish between reading the manifest and reading its
        files is not an error: the newer one is read instead.
        """
        for _ in range(_LOAD_ATTEMPTS):
            manifest = self._generations.manifest()
            if manifest is None:
                return
            if manifest["model_id"] != self.model_id or manifest["dim"] != self.dim:
                # Another embedding model built this index: start empty, reconcile rebuilds it.
                return
            gen_dir = self._generations.path(manifest)
            try:
                index = self._faiss.read_index(str(gen_dir / "index.faiss"))
                tomb = np.load(gen_dir / "tombstones.npy") if (gen_dir / "tombstones.npy").exists() \
                    else np.zeros(0)
            except (FileNotFoundError, RuntimeError):
                if self._generations.manifest() == manifest:
                    raise  # still in force and unreadable: a real fault, not a switch
                continue
            with self._lock:
                self._index, self.kind, self.generation = index, manifest["kind"], int(manifest["generation"])
                self._tombstones = {int(x) for x in tomb}
                self._gpu_index = None
                self._loaded_version = _version_of(manifest)
                self._selectors.clear()
            return
        raise IndexIntegrityError(f"the index in {self.directory} changed {_LOAD_ATTEMPTS} times while loading")

    def refresh(self) -> bool:
        """Load the published generation if it is not the one in memory; True if one was loaded.

        One caller loads while the others go on searching the generation in memory, so a request
        never waits for, or fails on, a switch.
        """
        if self.version == self._loaded_version:
            return False
        if not self._refreshing.acquire(blocking=False):
            return False
        try:
            if self.version == self._loaded_version:
                return False
            self.load()
            return True
        finally:
            self._refreshing.release()

    @property
    def loaded_version(self) -> str:
        """The version (as :attr:`version` names it) of the generation searches use now."""
        return self._loaded_version

    def save(self) -> None:
        with self._lock:
            data = self._faiss.serialize_index(self._index).tobytes()
            tomb = np.array(sorted(self._tombstones), dtype=np.int64)

            def write(gen_dir: Path) -> dict[str, Any]:
                (gen_dir / "index.faiss").write_bytes(data)
                with (gen_dir / "tombstones.npy").open("wb") as fh:
                    np.save(fh, tomb)
                return {"kind": self.kind, "dim": self.dim, "model_id": self.model_id,
                        "vectors": int(self._index.ntotal), "tombstones": len(tomb),
                        "index_sha256": hashlib.sha256(data).hexdigest()}

            manifest = self._generations.publish(write)
            self.generation = int(manifest["generation"])
            self._loaded_version = _version_of(manifest)

    @property
    def version(self) -> str:
        """What an audit record names: generation and content hash of the manifest in force."""
        return _version_of(self._generations.manifest())

    # --- contents -------------------------------------------------------------------------------

    def ids(self) -> np.ndarray:
        """Live ids: those stored minus tombstones."""
        with self._lock:
            stored = self._faiss.vector_to_array(self._index.id_map).astype(np.int64)
            if not self._tombstones:
                return np.sort(stored)
            return np.sort(np.setdiff1d(stored, np.fromiter(self._tombstones, dtype=np.int64)))

    def __len__(self) -> int:
        with self._lock:
            return int(self._index.ntotal) - len(self._tombstones)

    def reconcile(self, desired_ids: np.ndarray, fetch: Callable[[np.ndarray], np.ndarray],
                  batch: int = 4096, compact: bool = False) -> ReconcileReport:
        """Make the index hold exactly ``desired_ids``; ``fetch`` returns their vectors from the catalog.

        ``compact`` (erasure) rebuilds instead of leaving tombstones, so no removed vector stays in the file.
        """
        with self._lock:
            desired = np.unique(desired_ids.astype(np.int64))
            present = self.ids()
            to_remove = np.setdiff1d(present, desired)
            to_add = np.setdiff1d(desired, present)
            want_kind = "hnsw" if len(desired) > self.exact_max else "flat"
            tomb_after = len(self._tombstones) + (len(to_remove) if self.kind == "hnsw" else 0)
            rebuild = want_kind != self.kind or (
                self._index.ntotal > 0 and tomb_after > TOMBSTONE_REBUILD_FRACTION * self._index.ntotal) or (
                compact and tomb_after > 0)
            if rebuild:
                index = self._empty(want_kind)
                for start in range(0, len(desired), batch):
                    ids = desired[start:start + batch]
                    index.add_with_ids(fetch(ids), ids)
                self._index, self.kind, self._tombstones = index, want_kind, set()
            else:
                if len(to_remove):
                    if self.kind == "flat":
                        self._index.remove_ids(self._faiss.IDSelectorBatch(to_remove))
                    else:
                        self._tombstones.update(int(x) for x in to_remove)
                for start in range(0, len(to_add), batch):
                    ids = to_add[start:start + batch]
                    # A tombstoned id may not come back: its stale vector is still stored under it and
                    # HNSW cannot remove it, so re-adding would leave two vectors for one id. Catalog
                    # ids are never reused (AUTOINCREMENT), so this means the catalog was replaced.
                    revived = [int(x) for x in ids if int(x) in self._tombstones]
                    if revived:
                        raise IndexIntegrityError(f"chunk ids {revived[:5]} were reused; catalog ids must be unique")
                    self._index.add_with_ids(fetch(ids), ids)
            self._gpu_index = None
            self._selectors.clear()
            changed = rebuild or len(to_add) > 0 or len(to_remove) > 0
            if changed or self._generations.manifest() is None:
                self.save()
            return ReconcileReport(len(to_add), len(to_remove), rebuild, len(self), self.kind, self.generation)

    # --- search ---------------------------------------------------------------------------------

    def _searchable(self) -> Any:
        if not self._use_gpu():
            return self._index
        if self._gpu_index is None:
            res = self._faiss.StandardGpuResources()
            self._gpu_index = self._faiss.index_cpu_to_gpu(res, 0, self._index)
        return self._gpu_index

    def search(self, queries: np.ndarray, k: int,
               allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query, over ``allowed_ids`` only when given (filter before ranking)."""
        scores, ids, _ = self.search_versioned(queries, k, allowed_ids)
        return scores, ids

    def search_versioned(self, queries: np.ndarray, k: int,
                         allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """As :meth:`search`, with the version of the generation that answered (what the audit names)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if self.search_threads is not None:
            self._faiss.omp_set_num_threads(self.search_threads)
        with self._lock:
            version = self._loaded_version
            empty = (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), version)
            if self._index.ntotal == 0 or k <= 0:
                return empty
            k = min(k, int(self._index.ntotal))
            if self._use_gpu():
                return (*self._search_gpu(queries, k, allowed_ids), version)
            params, selector = self._params(allowed_ids, k)
            if params is _NOTHING_ALLOWED:
                return empty
            scores, ids = self._index.search(queries, k, params=params)
            del selector  # held until faiss is done with it
            return scores, ids, version

    def _params(self, allowed_ids: np.ndarray | None, k: int) -> tuple[Any, Any]:
        """(search parameters, the selector they point at) for ``allowed_ids`` minus tombstones.

        The selector is returned so the caller holds it while faiss uses it (the C++ parameters
        keep only a pointer). Cached per allowed array, for the k that every request of the query
        side uses (k up to ``HNSW_EF_SEARCH``, so the HNSW efSearch is the same).
        """
        cacheable = allowed_ids is not None and k <= HNSW_EF_SEARCH
        if cacheable:
            cached = self._selectors.get(id(allowed_ids))
            if cached is not None and cached[0] is allowed_ids:
                return cached[1], cached[2]
        selector: Any
        if allowed_ids is not None:
            allowed = np.asarray(allowed_ids, dtype=np.int64)
            if self._tombstones:
                allowed = np.setdiff1d(allowed, np.fromiter(self._tombstones, dtype=np.int64))
            selector = self._faiss.IDSelectorBatch(allowed) if len(allowed) else None
        elif self._tombstones:
            dead = np.fromiter(self._tombstones, dtype=np.int64)
            selector = self._faiss.IDSelectorNot(self._faiss.IDSelectorBatch(dead))
        else:
            selector = None
        params: Any
        if allowed_ids is not None and selector is None:
            params = _NOTHING_ALLOWED
        elif self.kind == "hnsw":
            ef = max(HNSW_EF_SEARCH, k)
            params = self._faiss.SearchParametersHNSW(sel=selector, efSearch=ef) if selector \
                else self._faiss.SearchParametersHNSW(efSearch=ef)
        else:
            params = self._faiss.SearchParameters(sel=selector) if selector else None
        if cacheable and allowed_ids is not None:
            if len(self._selectors) >= _SELECTOR_CACHE:
                self._selectors.pop(next(iter(self._selectors)))
            self._selectors[id(allowed_ids)] = (allowed_ids, params, selector)
        return params, selector

    def _search_gpu(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """GPU indexes take no selectors: search wider and filter, widening until k survive."""
        index = self._searchable()
        allowed = set(int(x) for x in allowed_ids) if allowed_ids is not None else None
        total = int(self._index.ntotal)
        out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(queries), k), -1, dtype=np.int64)
        wide = min(total, max(4 * k, 64))
        while True:
            scores, ids = index.search(queries, min(wide, 2048))
            done = True
            for q in range(len(queries)):
                keep = [(s, i) for s, i in zip(scores[q], ids[q], strict=True)
                        if i >= 0 and int(i) not in self._tombstones and (allowed is None or int(i) in allowed)]
                for j, (s, i) in enumerate(keep[:k]):
                    out_s[q, j], out_i[q, j] = s, i
                if len(keep) < k and wide < min(total, 2048):
                    done = False
            if done:
                return out_s, out_i
            wide = min(total, wide * 4)
