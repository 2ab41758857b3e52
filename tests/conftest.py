"""Shared fixtures. The FHIR test-server fixtures live in tests/fhir_server/plugin.py."""

import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

pytest_plugins = ["tests.fhir_server.plugin"]

# Property tests explore new random examples on each developer's run (and keep what failed in
# .hypothesis/), but CI (``.ci/run`` sets ``HYPOTHESIS_PROFILE=ci``; ``CI=true`` alone does too)
# draws the same examples every run: a red CI run is then a change's doing, never a draw's. A
# failure a random run finds is kept as an explicit test (an ``@example`` or a strict xfail naming
# the bug), so that CI checks it every time.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _CI else "default"))


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Undo what a test's in-process command did to the root logger (``serve``, ``worker`` and
    the other service commands install a JSON handler on the process's stderr, once per process).
    Run in process, that stderr is a test's capture: left behind, the handler writes later tests'
    log lines (pytest-httpserver's request log, say) into their captured stderr, or fails on the
    closed capture with "--- Logging error ---"."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
