"""A person's decision on a conflict flagged for them (``CONFLICT_POLICY=flag``): ``overwrite``
(ours is written over theirs) or ``keep-remote`` (theirs is kept). Plain functions over the store,
for the API, the CLI and the console.

``overwrite`` queues the record again: the worker gates it (a decision never bypasses consent)
and sends it If-Match the server's versions the conflict was flagged against, so a change made on
the server since meets a 412 and is flagged again. ``keep-remote`` records those versions as what
the server holds (as the ``keep-remote`` policy does): nothing is sent. Either is audited (an
AuditEvent naming who decided: an API key id, or ``cli``) and counted in
``fhir_alliance_conflicts_total``.

A decision names the conflict it was made on: ``against``, the server's versions the person was
shown (``conflict_versions`` on the status), and ``record_version``, the version of our record
they were shown (the status's ``record_version``). The same outbox item can be flagged again (an
``overwrite`` meets a newer change), so the item alone does not say which conflict; and a newer
version of the record can be flagged against the same server versions, so those alone do not
say which of our versions would be written. A decision against other versions than the flagged
ones, or on another record version, decides nothing (:class:`ConflictChanged`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from fhir_alliance_service import audit
from fhir_alliance_service.metrics import CONFLICTS
from fhir_alliance_service.store.interface import SentResource, Store, SyncState, SyncStatus
from fhir_alliance_service.usecases.status import RecordStatus, record_status

__all__ = [
    "DECIDED_KEEP_REMOTE",
    "DECIDED_OVERWRITE",
    "DECISIONS",
    "ConflictChanged",
    "NotFlagged",
    "RecordVersionChanged",
    "ServerVersionsUnknown",
    "decide_conflict",
    "format_versions",
    "is_flagged",
    "parse_versions",
]

#: The decisions, and the ``conflict`` each leaves on the record's status.
DECIDED_OVERWRITE: Final = "decided-overwrite"
DECIDED_KEEP_REMOTE: Final = "decided-keep-remote"
DECISIONS: Final = {"overwrite": DECIDED_OVERWRITE, "keep-remote": DECIDED_KEEP_REMOTE}

#: The ``conflict`` of an item held for a person by the conflict policy (``sync/worker.py``).
_FLAGGED = "flagged"


class NotFlagged(Exception):
    """The record's newest item is not held for a person by a conflict; nothing changed."""


class ServerVersionsUnknown(Exception):
    """``keep-remote`` on a conflict whose server versions were not noted (flagged before they
    were, or the server could not be read then); nothing changed."""


class ConflictChanged(Exception):
    """The record's flagged conflict is not against the versions the decision was made on (it was
    decided meanwhile and flagged again, against a newer change); nothing changed. ``now``: the
    versions it is flagged against now, to show the person. ``path``: the decision's field that
    no longer holds (an API error names it)."""

    path = "against"

    def __init__(self, now: Sequence[SentResource], message: str | None = None) -> None:
        self.now = tuple(now)
        super().__init__(
            message
            or "the conflict changed since it was shown: it is now against "
            f"{format_versions(self.now) or 'no noted version'}; nothing changed, decide again"
        )


class RecordVersionChanged(ConflictChanged):
    """The record's flagged conflict is on another version of our record than the one the
    decision was made on (a newer version was taken in and flagged, perhaps against the same
    server versions); nothing changed. ``version``: the record version flagged now."""

    path = "record_version"

    def __init__(self, now: Sequence[SentResource], version: int) -> None:
        self.version = version
        super().__init__(
            now,
            f"the conflict changed since it was shown: it is now on record version {version}; "
            "nothing changed, decide again",
        )


def format_versions(versions: Sequence[SentResource]) -> str:
    """``versions`` as one line, ``Type/id/_history/version`` (``Type/id`` without a version)
    joined by commas: what the CLI prints and takes back (``--against``), and the console's form
    carries. The empty string for none."""
    return ",".join(
        f"{v.resource_type}/{v.id}" + (f"/_history/{v.version_id}" if v.version_id else "")
        for v in versions
    )


def parse_versions(text: str) -> tuple[SentResource, ...]:
    """The versions :func:`format_versions` wrote; ValueError for anything else."""
    versions = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        pieces = part.split("/")
        if len(pieces) == 2 and all(pieces):
            versions.append(SentResource(pieces[0], pieces[1], None))
        elif len(pieces) == 4 and pieces[2] == "_history" and all(pieces):
            versions.append(SentResource(pieces[0], pieces[1], pieces[3]))
        else:
            raise ValueError("versions must read Type/id/_history/version, joined by commas")
    return tuple(versions)


def _same_versions(a: Sequence[SentResource], b: Sequence[SentResource]) -> bool:
    """Whether ``a`` and ``b`` name the same versions, in any order."""

    def key(v: SentResource) -> tuple[str, str, str]:
        return (v.resource_type, v.id, v.version_id or "")

    return sorted(a, key=key) == sorted(b, key=key)


def is_flagged(status: SyncStatus | None) -> bool:
    """Whether ``status`` is a conflict held for a person to decide."""
    return status is not None and status.state is SyncState.HELD and status.conflict == _FLAGGED


def decide_conflict(
    store: Store,
    record_id: str,
    decision: str,
    *,
    against: Sequence[SentResource],
    record_version: int,
    decided_by: str,
    at: datetime,
) -> RecordStatus:
    """Apply ``decision`` (``overwrite`` or ``keep-remote``, :data:`DECISIONS`) to the record's
    flagged conflict, if it is flagged ``against`` these server versions (the
    ``conflict_versions`` the person was shown, in any order) on ``record_version`` (the
    status's ``record_version`` they were shown), and return its new status.
    ``decided_by``: the API key id, or ``cli``. Raises ``RecordNotFound``
    (``usecases/status.py``), :class:`NotFlagged`, :class:`ConflictChanged` (its
    :class:`RecordVersionChanged` too) or :class:`ServerVersionsUnknown` (nothing changed),
    ValueError for another decision."""
    conflict = DECISIONS.get(decision)
    if conflict is None:
        raise ValueError("decision must be overwrite or keep-remote")
    current = record_status(store, record_id)
    status = current.sync
    if not is_flagged(status):
        raise NotFlagged("the record has no conflict flagged for a person to decide")
    assert status is not None and status.item_id is not None
    if status.record_version != record_version:
        raise RecordVersionChanged(status.conflict_versions, status.record_version)
    if not _same_versions(against, status.conflict_versions):
        raise ConflictChanged(status.conflict_versions)
    keep_remote = decision == "keep-remote"
    if keep_remote and not status.conflict_versions:
        raise ServerVersionsUnknown(
            "the server's version at the conflict was not noted: decide overwrite (it meets the "
            "conflict again and notes it), then decide again"
        )
    entry = audit.conflict_decision_event(
        record_id,
        current.record.patient,
        status.record_version,
        decision,
        at,
        decided_by=decided_by,
        against=status.conflict_versions,
    )
    decided = store.decide_conflict(  # the item is of ``record_version``; a newer one supersedes it
        status.item_id,
        against=status.conflict_versions,  # as stored: the store compares them as it wrote them
        keep_remote=keep_remote,
        conflict=conflict,
        audit=[entry],
        at=at,
    )
    if not decided:  # decided meanwhile (and perhaps flagged again), or superseded
        now = store.sync_status(record_id)
        if is_flagged(now) and now is not None:
            if now.record_version != record_version:
                raise RecordVersionChanged(now.conflict_versions, now.record_version)
            raise ConflictChanged(now.conflict_versions)
        raise NotFlagged("the record has no conflict flagged for a person to decide")
    CONFLICTS.labels(conflict).inc()
    return record_status(store, record_id)
