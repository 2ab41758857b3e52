"""Noticing, while ``serve`` or ``worker`` runs, that the store's schema is no longer the one this
release was started on (another release's ``fhir-alliance db upgrade`` ran meanwhile).

Both commands check the schema at start; this re-reads the store's revision (one small query)
at most once every :data:`SCHEMA_CHECK_SECONDS` per process. Once it differs, the watch stays
changed: the process must be restarted with the release that matches the database (migration
0009, for one, rewrote patient keys that older code would go on writing in the old spelling)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from sqlalchemy.exc import SQLAlchemyError

from .schema import head_revision

__all__ = ["SCHEMA_CHECK_SECONDS", "SchemaWatch"]

#: How often, at most, a running process re-reads the store's schema revision.
SCHEMA_CHECK_SECONDS: Final = 10.0

log = logging.getLogger(__name__)


class SchemaWatch:
    """The store's revision, compared with ``expected`` (by default this release's newest
    migration) at most once every ``interval`` seconds: the first time one interval after the
    watch is made, the process's start having checked it already."""

    def __init__(
        self,
        read_revision: Callable[[], str | None],
        *,
        expected: str | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_revision = read_revision
        self._expected = expected
        self.interval = SCHEMA_CHECK_SECONDS if interval is None else interval
        self._clock = clock
        self._next = clock() + self.interval
        self._lock = threading.Lock()
        self._mismatch: str | None = None

    def mismatch(self) -> str | None:
        """None while the store's schema is the expected one (or when it is not time to look
        again); else one line saying what it is at and what to do, the same from then on."""
        if self._mismatch is not None:
            return self._mismatch
        with self._lock:  # one thread reads; the others go on with the last answer
            now = self._clock()
            if now < self._next:
                return None
            self._next = now + self.interval
        try:
            current = self._read_revision()
        except SQLAlchemyError as exc:  # an outage shows (and is logged) where the store is used
            log.debug("schema revision not read: %s", type(exc).__name__)
            return None
        if self._expected is None:
            self._expected = head_revision()
        if current == self._expected:
            return None
        self._mismatch = (
            f"database schema is at {current or 'nothing (empty)'}, expected {self._expected}: "
            "it changed while this process was running (another release's "
            '"fhir-alliance db upgrade"?); restart it with the release that matches the database'
        )
        log.error(self._mismatch)
        return self._mismatch
