"""A person's decision on a conflict flagged for them (``CONFLICT_POLICY=flag``): ``overwrite``
(ours is written over theirs) or ``keep-remote`` (theirs is kept). Plain functions over the store,
for the API, the CLI and the console.

``overwrite`` queues the record again: the worker gates it (a decision never bypasses consent)
and sends it If-Match the server's versions the conflict was flagged against, so a change made on
the server since meets a 412 and is flagged again. ``keep-remote`` records those versions as what
the server holds (as the ``keep-remote`` policy does): nothing is sent. Either is audited (an
AuditEvent naming who decided: an API key id, or ``cli``) and counted in
``fhir_alliance_conflicts_total``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from fhir_alliance_service import audit
from fhir_alliance_service.metrics import CONFLICTS
from fhir_alliance_service.store.interface import Store, SyncState, SyncStatus
from fhir_alliance_service.usecases.status import RecordStatus, record_status

__all__ = [
    "DECIDED_KEEP_REMOTE",
    "DECIDED_OVERWRITE",
    "DECISIONS",
    "NotFlagged",
    "ServerVersionsUnknown",
    "decide_conflict",
    "is_flagged",
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


def is_flagged(status: SyncStatus | None) -> bool:
    """Whether ``status`` is a conflict held for a person to decide."""
    return status is not None and status.state is SyncState.HELD and status.conflict == _FLAGGED


def decide_conflict(
    store: Store, record_id: str, decision: str, *, decided_by: str, at: datetime
) -> RecordStatus:
    """Apply ``decision`` (``overwrite`` or ``keep-remote``, :data:`DECISIONS`) to the record's
    flagged conflict and return its new status. ``decided_by``: the API key id, or ``cli``.
    Raises ``RecordNotFound`` (``usecases/status.py``), :class:`NotFlagged` or :class:`ServerVersionsUnknown`
    (nothing changed), ValueError for another decision."""
    conflict = DECISIONS.get(decision)
    if conflict is None:
        raise ValueError("decision must be overwrite or keep-remote")
    current = record_status(store, record_id)
    status = current.sync
    if not is_flagged(status):
        raise NotFlagged("the record has no conflict flagged for a person to decide")
    assert status is not None and status.item_id is not None
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
    decided = store.decide_conflict(
        status.item_id, keep_remote=keep_remote, conflict=conflict, audit=[entry], at=at
    )
    if not decided:  # decided meanwhile, or superseded by a newer version
        raise NotFlagged("the record has no conflict flagged for a person to decide")
    CONFLICTS.labels(conflict).inc()
    return record_status(store, record_id)
