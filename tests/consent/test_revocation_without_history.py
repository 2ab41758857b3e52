"""Revoking a consent that has no status history: it stays in force from its ``date`` up to the
revocation (decisions then are unchanged), never before its ``date`` (fail-closed), and never
after the revocation. The records still map to FHIR R4 and R5 and back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_alliance.consent.decision import DecisionOutcome
from fhir_alliance.consent.engine import ConsentEngine
from fhir_alliance.errors import InputError
from fhir_alliance.mapping.consent import from_consent, to_consent
from fhir_alliance.model.consent import (
    ConsentRecord,
    ConsentRevocation,
    ConsentStatus,
    StatusChange,
    apply_revocation,
)
from fhir_alliance.schemas.consent import load_consent, load_consent_records
from tests.consent.builders import consent, request, t
from tests.consent.scenarios import DIRECTORY, DR_A, share_with

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "consent"


def _revoke(record: ConsentRecord, at: str) -> ConsentRecord:
    return apply_revocation(record, ConsentRevocation(consent=record.id, at=t(at)))


def _outcome(record: ConsentRecord, at: str) -> DecisionOutcome:
    return ConsentEngine([record], directory=DIRECTORY).decide(request(DR_A, at=at)).outcome


def test_a_decision_before_the_revocation_still_permits() -> None:
    """A permit given on 1 January without a history, revoked on 1 July: a decision at 1 June is
    PERMIT before and after the revocation; at and after 1 July there is no consent, as before."""
    given = consent("c1", "permit", date="2025-01-01", **share_with(DR_A))
    assert given.history == ()
    assert _outcome(given, "2025-06-01") is DecisionOutcome.PERMIT
    revoked = _revoke(given, "2025-07-01")
    assert revoked.status is ConsentStatus.REVOKED
    assert revoked.history == (
        StatusChange(ConsentStatus.ACTIVE, t("2025-01-01")),
        StatusChange(ConsentStatus.REVOKED, t("2025-07-01")),
    )
    assert _outcome(revoked, "2025-01-01") is DecisionOutcome.PERMIT
    assert _outcome(revoked, "2025-06-30T23:59") is DecisionOutcome.PERMIT
    for after in ("2025-07-01", "2025-08-01"):
        assert _outcome(revoked, after) is DecisionOutcome.NO_CONSENT


def test_a_deny_without_history_still_denies_before_its_revocation() -> None:
    """A restriction (deny) without a history, revoked later: before the revocation it still
    denies (a revocation must not turn a past deny into 'no consent' for an earlier instant)."""
    deny = consent("c1", "deny", date="2025-01-01", **share_with(DR_A))
    revoked = _revoke(deny, "2025-07-01")
    assert _outcome(revoked, "2025-06-01") is DecisionOutcome.DENY
    assert _outcome(revoked, "2025-07-02") is DecisionOutcome.NO_CONSENT


def test_nothing_counts_before_the_consent_was_given() -> None:
    """Fail-closed: the recorded span starts at the consent's ``date``. Before it, the revoked
    consent does not count (no history says it was in force before it was given)."""
    revoked = _revoke(consent("c1", "permit", date="2025-03-01", **share_with(DR_A)), "2025-07-01")
    assert _outcome(revoked, "2025-02-28") is DecisionOutcome.NO_CONSENT


def test_a_revocation_before_the_consent_date_is_refused() -> None:
    """A consent dated after the revocation: the revocation is refused at ``at`` and nothing is
    recorded (the consent is not made active, nor revoked)."""
    given = consent("c1", "permit", date="2025-08-01", **share_with(DR_A))
    with pytest.raises(InputError) as info:
        _revoke(given, "2025-07-01")
    assert [i.path for i in info.value.issues] == ["at"]
    assert given.status is ConsentStatus.ACTIVE and given.history == ()


def test_a_consent_without_a_date_never_meets_a_revocation() -> None:
    """A consent without ``date`` is refused at ``date`` by the loader, together with the
    revocation that names it: no active span is ever made up for it."""
    data = json.loads((EXAMPLES / "recording-ai-notes.json").read_text())
    del data["date"]
    revocation = {
        "kind": "consent-revocation",
        "consent": f"{data['id']}",
        "at": "2025-07-01T00:00:00+00:00",
    }
    with pytest.raises(InputError) as info:
        load_consent_records([data, revocation])
    assert "0.date" in [i.path for i in info.value.issues]


def test_a_draft_without_history_stays_never_active() -> None:
    """Only an active consent gets its span recorded: a draft withdrawn before it was in force
    was never active, before or after the withdrawal."""
    draft = consent("c1", "permit", status="draft", **share_with(DR_A))
    revoked = _revoke(draft, "2025-07-01")
    assert [c.status for c in revoked.history] == [ConsentStatus.REVOKED]
    assert _outcome(revoked, "2025-06-01") is DecisionOutcome.NO_CONSENT


@pytest.mark.parametrize("version", ["4.0.1", "5.0.0"])
def test_the_revoked_consent_maps_to_fhir_and_back_unchanged(version: str) -> None:
    """The docs' recording consent (no history) revoked: its two status changes go to FHIR R4 and
    R5 and come back as they were, so the span survives a round trip through the EHR."""
    record = load_consent(json.loads((EXAMPLES / "recording-ai-notes.json").read_text()))
    assert record.history == ()
    revoked = apply_revocation(
        record, ConsentRevocation(consent=record.id, at=t("2025-07-01T12:00"))
    )
    assert [c.status for c in revoked.history] == [ConsentStatus.ACTIVE, ConsentStatus.REVOKED]
    assert from_consent(to_consent(revoked, version=version)) == revoked
