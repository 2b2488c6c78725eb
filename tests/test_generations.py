"""rag.generations: a new generation is in force only once whole; a crash leaves the previous one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rag.generations import MANIFEST, GenerationDirectory


def _writer(payload: bytes) -> Any:
    def write(gen_dir: Path) -> dict[str, Any]:
        (gen_dir / "data.bin").write_bytes(payload)
        (gen_dir / "sub").mkdir()
        (gen_dir / "sub" / "part.bin").write_bytes(payload[::-1])
        return {"size": len(payload)}

    return write


def test_publish_puts_the_new_generation_in_force_and_removes_older_ones(tmp_path: Path) -> None:
    gens = GenerationDirectory(tmp_path / "idx")
    first = gens.publish(_writer(b"one"))
    second = gens.publish(_writer(b"two!"))
    assert (first["generation"], second["generation"]) == (1, 2)
    assert gens.manifest() == second == {"generation": 2, "path": "gen-00000002", "size": 4}
    assert (gens.path(second) / "data.bin").read_bytes() == b"two!"
    assert sorted(p.name for p in (tmp_path / "idx").glob("gen-*")) == ["gen-00000002"]


def test_a_writer_that_fails_leaves_the_previous_generation_in_force(tmp_path: Path) -> None:
    gens = GenerationDirectory(tmp_path / "idx")
    gens.publish(_writer(b"one"))

    def crash(gen_dir: Path) -> dict[str, Any]:
        (gen_dir / "data.bin").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        gens.publish(crash)
    manifest = gens.manifest()
    assert manifest is not None and manifest["generation"] == 1
    assert (gens.path(manifest) / "data.bin").read_bytes() == b"one"
    # the next publish replaces the half-written directory and still numbers on from the manifest
    third = gens.publish(_writer(b"three"))
    assert third["generation"] == 2 and (gens.path(third) / "data.bin").read_bytes() == b"three"
    assert json.loads((tmp_path / "idx" / MANIFEST).read_text()) == third
