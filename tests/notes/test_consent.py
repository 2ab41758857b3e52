"""Notes and consents: PSYTHPN content is disclosed only under a provision that names it (a property
over random consents), and an AI-drafted note needs the client's recording/AI-notes consent at the
session time."""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.gate import disclosure_request, requested_resource
from fhir_alliance.mapping.consent import MAPPER as CONSENT_MAPPER
from fhir_alliance.mapping.note import (
    ai_disclosure_permitted,
    ai_drafting_decision,
    ai_drafting_request,
    to_fhir,
)
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import (
    ConsentKind,
    ConsentRecord,
    ConsentRevocation,
    ConsentStatus,
    Decision,
    Provision,
    ProvisionActor,
    StatusChange,
    apply_revocation,
)
from fhir_alliance.model.notes import AiDrafting, DraftingInput, NoteCategory
from fhir_alliance.schemas.notes import load_note
from fhir_alliance.terminology import (
    CONSENT_ACTION,
    V3_ACT_CODE,
    V3_ACT_REASON,
    V3_CONFIDENTIALITY,
    V3_PARTICIPATION_TYPE,
)

ROOT = Path(__file__).resolve().parents[2]
EHR = Ref(reference="Organization/ehr-clinic", type="Organization")
OTHER = Ref(reference="Organization/insurer", type="Organization")
PATIENT = Ref(reference="Patient/p1", type="Patient")
PSYTHPN = Coding(V3_ACT_CODE, "PSYTHPN")
LABELS = [Coding(V3_CONFIDENTIALITY, "R"), Coding(V3_ACT_CODE, "BH"), PSYTHPN]
NOW = datetime(2025, 7, 1, tzinfo=UTC)


def _note(name: str):
    return load_note(json.loads((ROOT / "examples" / "notes" / f"{name}.json").read_text()))


def _consent(name: str) -> ConsentRecord:
    record = CONSENT_MAPPER.load(json.loads((ROOT / "examples" / "consent" / name).read_text()))
    assert isinstance(record, ConsentRecord)
    return record


# --- PSYTHPN: a property over random sharing consents ----------------------------------------

_provisions = st.deferred(
    lambda: st.builds(
        Provision,
        type=st.sampled_from(list(Decision)),
        actors=st.lists(
            st.builds(
                ProvisionActor,
                role=st.just(Coding(V3_PARTICIPATION_TYPE, "IRCP")),
                reference=st.sampled_from([EHR, OTHER]),
            ),
            max_size=1,
        ).map(tuple),
        actions=st.lists(
            st.sampled_from([Coding(CONSENT_ACTION, "disclose"), Coding(CONSENT_ACTION, "use")]),
            max_size=1,
        ).map(tuple),
        security_labels=st.lists(st.sampled_from(LABELS), max_size=2, unique=True).map(tuple),
        purposes=st.lists(
            st.sampled_from([Coding(V3_ACT_REASON, "TREAT"), Coding(V3_ACT_REASON, "HPAYMT")]),
            max_size=1,
        ).map(tuple),
        provisions=st.lists(_provisions, max_size=2).map(tuple) | st.just(()),
    )
)


@st.composite
def _sharing_consents(draw: st.DrawFn) -> list[ConsentRecord]:
    consents = []
    for n in range(draw(st.integers(0, 3))):
        root = draw(_provisions)
        decision = draw(st.sampled_from(list(Decision)))
        consents.append(
            ConsentRecord(
                id=Identifier("https://clinic.example.org/consents", f"c{n}"),
                kind=ConsentKind.SHARING,
                patient=PATIENT,
                status=ConsentStatus.ACTIVE,
                decision=decision,
                date=datetime(2025, 1, 1, tzinfo=UTC),
                provision=replace(root, type=decision),
            )
        )
    return consents


def _walk(provision: Provision, path: str) -> list[Provision]:
    """The provisions from the root to the one at ``path`` (``root`` or ``0.1``)."""
    chain = [provision]
    if path != "root":
        for index in path.split("."):
            chain.append(chain[-1].provisions[int(index)])
    return chain


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(consents=_sharing_consents())
def test_psychotherapy_note_is_disclosed_only_under_a_provision_naming_psythpn(consents) -> None:
    """Whatever the consents, a psychotherapy note's DocumentReference is permitted only when every
    deciding permit names PSYTHPN on its path; a progress note with the same consents never needs it."""
    engine = ConsentEngine(consents)
    psy = _note("psychotherapy-note")
    document = to_fhir(psy)[0]
    decision = engine.decide(
        disclosure_request(document, patient=PATIENT, recipient=EHR, purposes=["TREAT"], at=NOW)
    )
    if decision.outcome is DecisionOutcome.PERMIT:
        by_id = {c.id: c for c in consents}
        for basis in decision.basis:
            chain = _walk(by_id[basis.consent].provision, basis.path)
            assert any(PSYTHPN in p.security_labels for p in chain), basis
    if not any(PSYTHPN in p.security_labels for c in consents for p in _all(c.provision)):
        assert decision.outcome is not DecisionOutcome.PERMIT


def _all(provision: Provision) -> list[Provision]:
    return [provision, *(p for child in provision.provisions for p in _all(child))]


def test_explicit_psythpn_permit_releases_the_psychotherapy_note() -> None:
    """The same note is permitted once a consent permits PSYTHPN content to the EHR explicitly,
    and held by a plain permit that does not name it."""
    document = to_fhir(_note("psychotherapy-note"))[0]
    plain = Provision(
        type=Decision.PERMIT,
        actors=(ProvisionActor(Coding(V3_PARTICIPATION_TYPE, "IRCP"), EHR),),
    )

    def decide(provision: Provision) -> DecisionOutcome:
        consent = ConsentRecord(
            id=Identifier("https://clinic.example.org/consents", "c1"),
            kind=ConsentKind.SHARING,
            patient=PATIENT,
            status=ConsentStatus.ACTIVE,
            decision=Decision.PERMIT,
            date=datetime(2025, 1, 1, tzinfo=UTC),
            provision=provision,
        )
        request = disclosure_request(
            document, patient=PATIENT, recipient=EHR, purposes=["TREAT"], at=NOW
        )
        return ConsentEngine([consent]).decide(request).outcome

    assert decide(plain) is DecisionOutcome.DENY
    assert decide(replace(plain, security_labels=(PSYTHPN,))) is DecisionOutcome.PERMIT


# --- AI drafting --------------------------------------------------------------------------------


def test_recording_consent_permits_the_named_tool_at_the_session_time() -> None:
    """The client's recording/AI-notes consent permits the AI tool it names, for the session."""
    decision = ai_drafting_decision(
        [_consent("recording-ai-notes.json")], _note("ai-drafted-progress-note")
    )
    assert decision.outcome is DecisionOutcome.PERMIT


def test_sharing_consent_alone_does_not_permit_ai_drafting() -> None:
    """Without a recording/AI-notes consent there is no permission to draft with AI."""
    decision = ai_drafting_decision([_consent("sharing.json")], _note("ai-drafted-progress-note"))
    assert decision.outcome is DecisionOutcome.NO_CONSENT


def test_another_tool_or_version_is_not_permitted() -> None:
    """A consent naming session-scribe 2.3 does not cover another version of the tool."""
    note = replace(
        _note("ai-drafted-progress-note"),
        ai_drafting=AiDrafting("session-scribe", "3.0", (DraftingInput.RECORDING,)),
    )
    decision = ai_drafting_decision([_consent("recording-ai-notes.json")], note)
    assert decision.outcome is not DecisionOutcome.PERMIT


def test_a_session_outside_the_consent_period_is_not_permitted() -> None:
    """A session after the consent's period ended is not covered."""
    note = _note("ai-drafted-progress-note")
    late = replace(
        note,
        session_at=datetime(2026, 1, 5, tzinfo=UTC),
        written_at=datetime(2026, 1, 5, 1, tzinfo=UTC),
    )
    decision = ai_drafting_decision([_consent("recording-ai-notes.json")], late)
    assert decision.outcome is not DecisionOutcome.PERMIT


def test_revocation_before_the_session_withdraws_the_permission() -> None:
    """Revoked before the session, the consent no longer permits drafting that session's note."""
    consent = _consent("recording-ai-notes.json")
    consent = replace(consent, history=(StatusChange(ConsentStatus.ACTIVE, consent.date),))
    note = _note("ai-drafted-progress-note")
    revoked = apply_revocation(
        consent, ConsentRevocation(consent=consent.id, at=note.session_at - timedelta(days=1))
    )
    assert ai_drafting_decision([revoked], note).outcome is not DecisionOutcome.PERMIT


def test_psychotherapy_notes_can_be_ai_drafted_under_the_same_consent() -> None:
    """The drafting question does not ask for PSYTHPN: that label governs disclosure, not drafting."""
    note = replace(_note("ai-drafted-progress-note"), category=NoteCategory.PSYCHOTHERAPY_NOTE)
    assert ai_drafting_decision([_consent("recording-ai-notes.json")], note).outcome is (
        DecisionOutcome.PERMIT
    )


def test_disclosure_is_held_after_a_later_revocation() -> None:
    """Drafting was permitted at the session; once the consent is revoked (after the session) the
    note may no longer leave, though the drafting decision itself still reads PERMIT."""
    consent = _consent("recording-ai-notes.json")
    # The lifecycle from its start, so that the revocation ends a span of being in force.
    consent = replace(consent, history=(StatusChange(ConsentStatus.ACTIVE, consent.date),))
    note = _note("ai-drafted-progress-note")
    assert ai_disclosure_permitted([consent], note)
    revoked = apply_revocation(
        consent, ConsentRevocation(consent=consent.id, at=note.session_at + timedelta(days=2))
    )
    assert ai_drafting_decision([revoked], note).outcome is DecisionOutcome.PERMIT
    assert not ai_disclosure_permitted([revoked], note)


def test_a_note_not_drafted_by_ai_needs_no_ai_notes_consent() -> None:
    """A hand-written note is never held for want of a recording/AI-notes consent."""
    note = replace(_note("psychotherapy-note"), ai_drafting=None)
    assert ai_disclosure_permitted([], note)


def _except_psychotherapy_notes() -> ConsentRecord:
    """The recording/AI-notes consent, except (deny) drafting psychotherapy-note content, named
    by document type (the note's content kind)."""
    consent = _consent("recording-ai-notes.json")
    kind = Coding(
        "https://fhir-alliance.org/fhir/CodeSystem/session-note-content", "psychotherapy-note"
    )
    deny = Provision(type=Decision.DENY, classes=(kind,))
    return replace(
        consent,
        provision=replace(consent.provision, provisions=(*consent.provision.provisions, deny)),
    )


def test_a_recording_consent_may_except_a_document_type_from_ai_drafting() -> None:
    """ "AI may draft my notes, but not psychotherapy notes", by document type: a psychotherapy
    note may not be drafted, a progress note may. The drafting question names the note's document
    type as the gate reads it from its DocumentReference; without it the deny met every note."""
    consent = _except_psychotherapy_notes()
    progress = _note("ai-drafted-progress-note")
    psychotherapy = replace(progress, category=NoteCategory.PSYCHOTHERAPY_NOTE)
    assert ai_drafting_decision([consent], progress).outcome is DecisionOutcome.PERMIT
    assert ai_drafting_decision([consent], psychotherapy).outcome is DecisionOutcome.DENY


def test_the_drafting_question_names_the_codes_the_gate_reads() -> None:
    """The note's codes in the drafting question are those the gate reads from its
    DocumentReference (type and category), for either content kind."""
    for category in NoteCategory:
        note = replace(_note("ai-drafted-progress-note"), category=category)
        [document, *_] = to_fhir(note)
        asked = ai_drafting_request(note).resource
        assert asked is not None
        assert asked.codes == requested_resource(document).codes
