"""Fixtures for client tests: a second HTTP server (a hostile host) and a retry policy that records waits."""

from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer

from fhir_alliance.client import RetryPolicy


class RecordedSleep:
    """Stands in for time.sleep: records each wait instead of blocking (an injected dependency)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def slept() -> RecordedSleep:
    return RecordedSleep()


@pytest.fixture
def retry_policy(slept: RecordedSleep) -> RetryPolicy:
    """Four attempts, recorded waits, jitter fixed at its ceiling so waits are predictable."""
    return RetryPolicy(max_attempts=4, backoff_base=0.5, sleep=slept, random=lambda: 1.0)


@pytest.fixture
def other_server() -> Iterator[HTTPServer]:
    """Another server on another port: it must never receive a request (or a token) from us."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()
