"""Standard output that loses nothing: every byte a command writes reaches the reader.

Python's text layer does not: it drops what a short ``write(2)`` left over, and a non-blocking
pipe that is full (a parent such as Node.js may leave stdout so) raises ``BlockingIOError`` out of
``print``. Under ``PYTHONUNBUFFERED`` (as containers often set) stdout's byte layer is the file
itself, one ``write(2)`` a call, so a nearly full pipe, or a signal, cuts writes short and the rest
is lost without a word; buffered, the first full pipe ends the command with a traceback.

:func:`stdout_writing_everything` gives a command a stdout whose every write is written whole
(:func:`write_all`), waiting while the pipe is full, with the same encoding, error handler and
buffering as before. A reader gone still raises ``BrokenPipeError``, which the command line turns
into exit status 141.
"""

from __future__ import annotations

import io
import select
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any, BinaryIO, cast

__all__ = ["flush_all", "stdout_writing_everything", "write_all"]


def write_all(stream: BinaryIO, data: bytes | memoryview) -> None:
    """Write all of ``data`` to the byte stream ``stream``: unbuffered, one ``write(2)`` a call,
    which may take part (a signal; a nearly full non-blocking pipe) or nothing for now
    (``None``); buffered, a full non-blocking pipe raises ``BlockingIOError`` saying how much it
    took. Either way the rest is written once the pipe takes more."""
    view = memoryview(data)
    while view:
        try:
            written: int | None = stream.write(view)
        except BlockingIOError as exc:  # buffered: it took this much (into its buffer)
            written = exc.characters_written
            _wait_until_writable(stream)
        if written is None:  # unbuffered: a full non-blocking pipe took nothing
            _wait_until_writable(stream)
            continue
        view = view[written:]


def flush_all(stream: IO[Any]) -> None:
    """Flush ``stream``, waiting while a non-blocking pipe is full."""
    while True:
        try:
            stream.flush()
        except BlockingIOError:
            _wait_until_writable(stream)
        else:
            return


def _wait_until_writable(stream: IO[Any]) -> None:
    select.select([], [stream.fileno()], [])


class _WholeWrites(io.RawIOBase):
    """A byte layer over ``target`` (stdout's own) whose writes are written whole; once
    ``discarding``, it takes everything and writes nothing (what is left after an error)."""

    def __init__(self, target: BinaryIO) -> None:
        super().__init__()
        self._target = target
        self.discarding = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if not self.discarding:
            write_all(self._target, view)
        return view.nbytes

    def flush(self) -> None:
        if not self.discarding:
            flush_all(self._target)

    def fileno(self) -> int:
        return self._target.fileno()

    def isatty(self) -> bool:
        return self._target.isatty()


@contextmanager
def stdout_writing_everything() -> Iterator[None]:
    """While the block runs, ``sys.stdout`` writes everything (see the module docstring), with
    stdout's encoding, error handler and buffering; then it is flushed and put back. A block
    that raises has what it printed flushed too, as far as the reader takes it: an error of that
    flush (the reader gone) does not replace the block's. Where stdout is no text stream over a
    byte layer nothing changes."""
    original = sys.stdout
    target = getattr(original, "buffer", None)
    if not isinstance(original, io.TextIOWrapper) or target is None:
        yield
        return
    original.flush()
    raw = _WholeWrites(target)
    wrapped = io.TextIOWrapper(
        cast(BinaryIO, raw),
        encoding=original.encoding,
        errors=original.errors,
        line_buffering=original.line_buffering,
        write_through=original.write_through,
    )
    sys.stdout = wrapped
    try:
        yield
        wrapped.flush()
    except BaseException:
        with suppress(OSError, ValueError):
            wrapped.flush()
        raise
    finally:
        if sys.stdout is wrapped:
            sys.stdout = original
        raw.discarding = True  # nothing more goes out: no second error when the layer goes
        wrapped.detach()
