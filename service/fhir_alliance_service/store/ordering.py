"""Which of two copies of a resource read from a FHIR server is the newer: what the pull checks
before merging a copy, and the store again in the transaction that writes it (two passes at
once). What a server answers is untrusted: a lagging replica, a cache or an overlap page can give
an older copy after a newer one, and ``meta.versionId`` (like ``meta.lastUpdated``) is optional.

* Version ids that are both numbers (``1``, ``2``, … ``10``) compare as numbers; equal ids are
  the same version; other different ids (UUIDs) say nothing about order.
* ``meta.lastUpdated`` compares as an instant.
* When the two disagree (a higher version with an older stamp), or neither orders the copies
  (different opaque ids and equal or missing stamps; no version id and an equal stamp), the
  answer is :attr:`RemoteOrder.UNSURE`: the caller must not widen sharing on such a copy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

__all__ = ["RemoteOrder", "parse_instant", "remote_order"]


class RemoteOrder(StrEnum):
    """A copy read now against the copy seen before."""

    NEWER = "newer"
    SAME = "same"
    OLDER = "older"
    UNSURE = "unsure"


def parse_instant(text: str | None) -> datetime | None:
    """A FHIR instant (``Z`` or an offset; none read as UTC), or None if it cannot be read."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


_Ordered = TypeVar("_Ordered", int, datetime)


def _compare(new: _Ordered, seen: _Ordered) -> RemoteOrder:
    if new > seen:
        return RemoteOrder.NEWER
    return RemoteOrder.OLDER if new < seen else RemoteOrder.SAME


def _by_version(seen: str | None, new: str | None) -> RemoteOrder | None:
    if seen is None or new is None:
        return None
    if seen == new:
        return RemoteOrder.SAME
    if seen.isascii() and seen.isdigit() and new.isascii() and new.isdigit():
        return _compare(int(new), int(seen))
    return None  # different opaque ids: no order


def remote_order(
    seen_version: str | None,
    seen_stamp: str | None,
    version: str | None,
    stamp: str | None,
) -> RemoteOrder:
    """How the copy (``version``, ``stamp``) stands against the one seen before."""
    by_version = _by_version(seen_version, version)
    seen_at, at = parse_instant(seen_stamp), parse_instant(stamp)
    by_stamp = _compare(at, seen_at) if at is not None and seen_at is not None else None
    if by_version is RemoteOrder.SAME:
        # The same version with a newer stamp: changed without a new version id (unsure).
        return RemoteOrder.UNSURE if by_stamp is RemoteOrder.NEWER else RemoteOrder.SAME
    if by_version is not None:
        agrees = by_stamp in (None, RemoteOrder.SAME, by_version)
        return by_version if agrees else RemoteOrder.UNSURE
    if by_stamp in (RemoteOrder.NEWER, RemoteOrder.OLDER):
        return by_stamp
    return RemoteOrder.UNSURE
