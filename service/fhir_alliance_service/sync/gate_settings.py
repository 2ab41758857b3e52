"""Held records decided again once the settings the gate asks with have changed.

Held records are re-queued when a patient's consents change or a consent time boundary passes
(``consent_times.py``). A hold can also come from the settings: who the clinic's EHR is in
consents (``recipients``), the purpose of every push (``purpose``), whether consent records are
sent (``push_consents``) and whether unsigned notes are (``push_draft_notes``). A clinic that
changes one of them and restarts changes no consent, so nothing would re-queue what the old
settings held: a rating held for "no consent" under a misspelt recipient, a consent record held
while ``push_consents`` was off (the EHR never hearing of it), a draft held while
``push_draft_notes`` was off, would stay held for good.

A worker, on its first claim, compares these settings with the ones recorded in the store's meta
by the last worker that started; when they differ (or none were recorded), every held record that
a consent change would release is re-queued (the draft and unsigned-note holds too, when
``push_draft_notes`` is now on and was not), and the gate decides each again under the settings
now in force. A conflict flagged for a person stays held. Then the settings are recorded, and the
recipients and purpose among the audiences recorded so far (:func:`earlier_audiences`): a record
sent under earlier ones is not retracted because the settings changed (``retract.py``: only
consents decide). Logs carry counts only.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, Final

from fhir_alliance_service.config import Settings
from fhir_alliance_service.store.interface import Store

__all__ = [
    "META_GATE_AUDIENCES",
    "META_GATE_SETTINGS",
    "earlier_audiences",
    "gate_settings",
    "regate_if_settings_changed",
]

log = logging.getLogger("fhir_alliance_service.sync.gate_settings")

#: Store meta name: the gate settings of the last worker that started (JSON).
META_GATE_SETTINGS: Final = "gate.settings"
#: Store meta name: every (recipients, purpose) recorded by a starting worker, oldest first (JSON).
META_GATE_AUDIENCES: Final = "gate.audiences"
#: The most audiences kept (the oldest are dropped): a bound, not a target.
MAX_AUDIENCES: Final = 50


def gate_settings(settings: Settings) -> dict[str, Any]:
    """The settings a gate decision depends on (recipients as a set: their order decides
    nothing)."""
    return {
        "recipients": sorted(set(settings.recipients)),
        "purpose": settings.purpose,
        "push_consents": settings.push_consents,
        "push_draft_notes": settings.push_draft_notes,
    }


def regate_if_settings_changed(settings: Settings, store: Store, *, at: datetime) -> int:
    """Re-queue the held records when the gate settings differ from those recorded by the last
    worker that started (see the module docstring), then record them; how many were re-queued."""
    now = gate_settings(settings)
    recorded = store.get_meta(META_GATE_SETTINGS)
    try:
        before = json.loads(recorded) if recorded is not None else None
    except ValueError:
        before = None
    if before == now:
        return 0
    notes_on = settings.push_draft_notes and not (
        isinstance(before, dict) and before.get("push_draft_notes") is True
    )
    released = store.release_all_held(notes=notes_on, at=at)
    audience = (tuple(now["recipients"]), str(now["purpose"]))
    audiences = [a for a in earlier_audiences(store) if a != audience] + [audience]
    store.set_meta(
        META_GATE_AUDIENCES,
        json.dumps([{"recipients": list(r), "purpose": p} for r, p in audiences[-MAX_AUDIENCES:]]),
    )
    store.set_meta(META_GATE_SETTINGS, json.dumps(now, sort_keys=True))
    if released:
        log.info("gate settings changed: %d held item(s) re-queued", released)
    return released


def earlier_audiences(store: Store) -> list[tuple[tuple[str, ...], str]]:
    """The (recipients, purpose) pairs that starting workers recorded, oldest first (the current
    settings' among them once a worker started with them); none when unknown or unreadable."""
    recorded = store.get_meta(META_GATE_AUDIENCES)
    try:
        entries = json.loads(recorded) if recorded is not None else []
    except ValueError:
        return []
    audiences: list[tuple[tuple[str, ...], str]] = []
    for entry in entries if isinstance(entries, list) else []:
        recipients = entry.get("recipients") if isinstance(entry, dict) else None
        purpose = entry.get("purpose") if isinstance(entry, dict) else None
        if (
            isinstance(recipients, list)
            and recipients
            and all(isinstance(r, str) for r in recipients)
            and isinstance(purpose, str)
        ):
            audiences.append((tuple(recipients), purpose))
    return audiences
