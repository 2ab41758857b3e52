"""When the client retries a request, and how long it waits: bounded attempts and total time.

Only requests whose repetition cannot change the result are retried (see :class:`Replay`); the
wait honours ``Retry-After`` (seconds or HTTP-date) up to a bound, else exponential backoff with full
jitter. Sleep and clocks are injectable so that tests run in real but short time.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from fhir_alliance.errors import InputError, Issue, ServerError, TransportError

__all__ = ["Replay", "RetryPolicy", "parse_retry_after"]

#: Statuses that say "the server did not process this request": safe to repeat any request
#: whose repetition the server itself would de-duplicate (conditional create).
REFUSED_STATUSES = frozenset({429, 503})


class Replay(enum.Enum):
    """How safe it is to send a request again after a transient failure."""

    #: GET, HEAD, PUT to an id (deterministic or with If-Match), DELETE: repeat freely.
    IDEMPOTENT = "idempotent"
    #: Conditional create (If-None-Exist): repeat only when the server refused it (429/503), never
    #: after a timeout, a reset or a 500/502/504, when the first attempt may still be running and
    #: conditional create is not atomic on real servers (two creates could race).
    IF_REFUSED = "if-refused"
    #: Plain POST (create, operations, Bundles with a POST entry): never repeated here; the outbox
    #: searches by identifier first.
    NEVER = "never"

    def allows(self, error: ServerError) -> bool:
        if not error.retryable or self is Replay.NEVER:
            return False
        if self is Replay.IDEMPOTENT:
            return True
        return not isinstance(error, TransportError) and error.status in REFUSED_STATUSES

    @staticmethod
    def weakest(replays: list[Replay]) -> Replay:
        order = [Replay.NEVER, Replay.IF_REFUSED, Replay.IDEMPOTENT]
        return min(replays, key=order.index, default=Replay.IDEMPOTENT)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (a Unix time). Accepts delay-seconds or an HTTP-date.

    Returns None when absent or unreadable; never negative.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():  # a superscript passes isdigit(), not float()
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds for retrying transient failures (429, 5xx, timeouts, resets).

    ``max_attempts`` counts the first try. A ``Retry-After`` longer than ``max_retry_after`` is not
    waited for: the error is raised at once with ``retry_after`` set, for the caller's outbox to
    schedule. ``max_elapsed`` bounds the whole call, waits included.
    """

    max_attempts: int = 4
    max_elapsed: float = 60.0
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    max_retry_after: float = 120.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)
    wall_clock: Callable[[], float] = field(default=time.time, compare=False)
    random: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        issues = [
            Issue(path=name, message="must be positive")
            for name, value in (
                ("max_attempts", self.max_attempts),
                ("max_elapsed", self.max_elapsed),
                ("backoff_max", self.backoff_max),
            )
            if value <= 0
        ] + [
            Issue(path=name, message="must not be negative")
            for name, value in (
                ("backoff_base", self.backoff_base),
                ("max_retry_after", self.max_retry_after),
            )
            if value < 0
        ]
        if issues:
            raise InputError("invalid retry policy", issues=issues)

    def delay(self, attempt: int, error: ServerError) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` starts at 1)."""
        if error.retry_after is not None and error.status in REFUSED_STATUSES:
            return error.retry_after
        ceiling = min(self.backoff_max, self.backoff_base * (2.0 ** (attempt - 1)))
        return float(self.random()) * ceiling  # full jitter

    def next_delay(self, attempt: int, started: float, error: ServerError) -> float | None:
        """The wait before the next attempt, or None if the bounds say stop."""
        if attempt >= self.max_attempts:
            return None
        wait = self.delay(attempt, error)
        if error.retry_after is not None and wait > self.max_retry_after:
            return None
        if self.clock() - started + wait > self.max_elapsed:
            return None
        return wait


NO_RETRY = RetryPolicy(max_attempts=1)
