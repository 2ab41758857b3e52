"""A total deadline for one client call: connecting, sending, reading the body and retries included.

Socket timeouts bound each read, not the call: a server that drips a byte every few seconds keeps a
call open for ever. So every call runs under a :class:`Deadline`; the connections it uses register
with it (through the connection classes that :class:`DeadlineAdapter` installs), and one watchdog
thread shuts their sockets down when the deadline passes. The blocked read then ends, and the client
sees ``deadline.expired`` and raises.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["Deadline", "DeadlineAdapter", "running_under"]


class Deadline:
    """The moment one call must be over by. Thread-safe: the watchdog expires it from its thread."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires_at = time.monotonic() + seconds
        self.expired = False
        self.finished = False
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()

    def attach(self, connection: HTTPConnection) -> None:
        """Watch ``connection``: its socket is shut down if the deadline passes."""
        with self._lock:
            if connection not in self._connections:
                self._connections.append(connection)
            expired = self.expired
        if expired:  # the deadline passed while no socket was attached yet
            _shut_down(connection)

    def release(self) -> None:
        """Stop watching the connections attached so far: call it before a connection goes back to
        the pool, where another call may take it."""
        with self._lock:
            self._connections.clear()

    def expire(self) -> None:
        """Called by the watchdog: mark expired and unblock every read of the call."""
        with self._lock:
            if self.finished:
                return
            self.expired = True
            connections = list(self._connections)
        for connection in connections:
            _shut_down(connection)

    def finish(self) -> None:
        """The call is over: its connections (now back in the pool) are no longer watched."""
        with self._lock:
            self.finished = True
            self._connections.clear()
        _WATCHDOG.forget()


def _shut_down(connection: HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread expiring deadlines in order (a heap), started on first use."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._active = 0
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline) -> None:
        with self._cond:
            earliest = not self._heap or deadline.expires_at < self._heap[0][0]
            heapq.heappush(self._heap, (deadline.expires_at, next(self._seq), deadline))
            self._active += 1
            if len(self._heap) > 2 * self._active + 64:  # drop finished ones now and then
                self._heap = [item for item in self._heap if not item[2].finished]
                heapq.heapify(self._heap)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="fhir-alliance-deadlines", daemon=True
                )
                self._thread.start()
            elif earliest:  # wake the watchdog only when it must wait less than it does now
                self._cond.notify()

    def forget(self) -> None:
        with self._cond:
            self._active = max(0, self._active - 1)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].finished:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        due = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(delay)
            due.expire()


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):  # a forked worker starts with a fresh watchdog
    os.register_at_fork(after_in_child=_WATCHDOG._reset)

_CURRENT: ContextVar[Deadline | None] = ContextVar("fhir_alliance_deadline", default=None)


def current() -> Deadline | None:
    """The deadline of the call running in this thread, if any."""
    return _CURRENT.get()


@contextlib.contextmanager
def running_under(deadline: Deadline) -> Iterator[Deadline]:
    """Run a call under ``deadline``: connections used inside attach to it; finished on exit."""
    _WATCHDOG.watch(deadline)
    token = _CURRENT.set(deadline)
    try:
        yield deadline
    finally:
        _CURRENT.reset(token)
        deadline.finish()


class _DeadlineConnectionMixin:
    """Attach the connection to the running call's deadline before it connects or sends."""

    def connect(self) -> None:
        deadline = _CURRENT.get()
        super().connect()  # type: ignore[misc]
        if deadline is not None:
            deadline.attach(self)  # type: ignore[arg-type]

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = _CURRENT.get()
        if deadline is not None:
            deadline.attach(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _DeadlineHTTPConnection(_DeadlineConnectionMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnectionMixin, HTTPSConnection):
    pass


class _DeadlineHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


_POOL_CLASSES: dict[str, type[HTTPConnectionPool]] = {
    "http": _DeadlineHTTPConnectionPool,
    "https": _DeadlineHTTPSConnectionPool,
}


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections (direct or through a proxy) honour the call deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager
