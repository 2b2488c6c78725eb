"""tests/floor.py: where ../shared is present, a floor test that skips fails the run instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import TESTS

FLOOR_TESTS = '''
import pytest

@pytest.mark.shared
def test_marked_floor():
    pytest.skip("corpus absent")

def test_unmarked_but_needs_shared():
    pytest.skip("/x/shared/corpus is absent (the shared corpora sit beside the checkout in ../shared)")

def test_other_skip():
    pytest.skip("needs a GPU")
'''


def _run(tmp_path: Path, require: bool) -> str:
    (tmp_path / "test_floors.py").write_text(FLOOR_TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("ENCLAVE_REQUIRE_SHARED", None)
    if require:
        env["ENCLAVE_REQUIRE_SHARED"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "floor", "-q", "-rfs", "-p", "no:cacheprovider",  # noqa: S603
                           "--rootdir", str(tmp_path), "-o", "markers=shared: floor", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    return proc.stdout


def test_floor_tests_skip_without_the_requirement(tmp_path: Path) -> None:
    assert "3 skipped" in _run(tmp_path, require=False)


def test_floor_tests_that_skip_fail_when_shared_is_required(tmp_path: Path) -> None:
    out = _run(tmp_path, require=True)
    assert "2 failed, 1 skipped" in out
    assert "FAILED test_floors.py::test_marked_floor" in out
    assert "FAILED test_floors.py::test_unmarked_but_needs_shared" in out
