"""The PostgreSQL availability rule of ``tests/service/conftest.py``: skip only when nothing
listens on 127.0.0.1:5432, and fail instead when ``CI=true``."""

from __future__ import annotations

import pytest

from tests.service import conftest


def test_unreachable_postgres_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside CI an unreachable server skips the test, saying why."""
    monkeypatch.setattr(conftest, "_postgres_reachable", lambda: False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"not reachable on 127\.0\.0\.1:5432"):
        conftest.postgres_available()


def test_unreachable_postgres_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``CI=true`` an unreachable server fails the test instead of skipping it."""
    monkeypatch.setattr(conftest, "_postgres_reachable", lambda: False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        conftest.postgres_available()


def test_reachable_postgres_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reachable server neither skips nor fails, in CI or not."""
    monkeypatch.setattr(conftest, "_postgres_reachable", lambda: True)
    monkeypatch.setenv("CI", "true")
    conftest.postgres_available()
