"""A pytest plugin: with ENCLAVE_REQUIRE_SHARED=1 a floor test that skips is a failure.

Floor tests hold Enclave to figures on the shared corpora in ../shared. Without them they skip,
saying so; but where the corpora are present (.ci/run sets ENCLAVE_REQUIRE_SHARED=1 then), a
skip would hide a floor that was never checked, so it fails the run instead. A floor test is
one marked ``shared``, or any test whose skip reason names ../shared.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("ENCLAVE_REQUIRE_SHARED") != "1" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if item.get_closest_marker("shared") is not None or "../shared" in reason:
        report.outcome = "failed"
        report.longrepr = f"floor test skipped although ENCLAVE_REQUIRE_SHARED=1 (../shared is present): {reason}"
