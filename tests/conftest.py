"""Shared fixtures. The FHIR test-server fixtures live in tests/fhir_server/plugin.py."""

import logging
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.fhir_server.plugin"]


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
