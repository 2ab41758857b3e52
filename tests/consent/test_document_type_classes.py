"""A class that is neither a resource type nor a profile names a document type (R5
``documentType``, R4 ``class`` LOINC 34904-3): compared with the resource's codes, and a missing
fact (the resource's codes unknown) for a deny, never for a permit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_alliance.consent import ConsentEngine, DecisionOutcome
from fhir_alliance.consent.decision import (
    DecisionRequest,
    RedactMode,
    RequestActor,
    RequestedResource,
)
from fhir_alliance.consent.gate import disclosure_request, requested_resource
from fhir_alliance.errors import InputError
from fhir_alliance.mapping.consent import from_consent, to_consent
from fhir_alliance.model.common import Coding, Ref
from fhir_alliance.model.consent import ConsentRecord
from fhir_alliance.terminology import LOINC, RESOURCE_TYPES
from tests.consent.builders import IRCP, consent, pou, prov
from tests.consent.scenarios import share_with

V3 = "http://terminology.hl7.org/CodeSystem"
#: LOINC 34904-3 Mental health Progress note: the document type of the library's session notes.
PROGRESS_NOTE = Coding(LOINC, "34904-3")
AT = datetime(2025, 6, 1, 9, tzinfo=UTC)


def _sharing_except(*classes: Coding) -> ConsentRecord:
    """Share with Organization/ehr, except (deny) content of ``classes``."""
    return consent(
        "c1",
        "permit",
        prov("deny", classes=list(classes)),
        **share_with(Ref(reference="Organization/ehr")),
    )


def _note_request() -> DecisionRequest:
    note = {
        "resourceType": "DocumentReference",
        "id": "n1",
        "status": "current",
        "type": {"coding": [PROGRESS_NOTE.to_fhir()]},
        "subject": {"reference": "Patient/p1"},
        "date": "2025-05-01T10:00:00Z",
    }
    return disclosure_request(
        note, patient="Patient/p1", recipient="Organization/ehr", purposes=["TREAT"], at=AT
    )


@pytest.mark.parametrize("version", ["4.0.1", "5.0.0"])
def test_a_deny_by_document_type_keeps_that_document(version: str) -> None:
    """ "Share, but not my mental health progress notes" (R4 ``class``, R5 ``documentType`` LOINC
    34904-3) denies the progress note: before, the document type was compared with the note's
    profiles only, never met, and the sharing permit released the note."""
    record = from_consent(to_consent(_sharing_except(PROGRESS_NOTE), version=version))
    decision = ConsentEngine([record]).decide(_note_request())
    assert decision.outcome is DecisionOutcome.DENY
    assert [b.path for b in decision.basis] == ["0"]


def _request(resource: RequestedResource) -> DecisionRequest:
    return DecisionRequest(
        patient=(Ref(reference="Patient/p1"),),
        actors=(RequestActor(Ref(reference="Organization/ehr"), IRCP),),
        at=AT,
        purposes=(pou("TREAT"),),
        action=Coding(f"{V3}/consentaction", "access"),
        resource=resource,
    )


@pytest.mark.parametrize(
    ("resource", "outcome"),
    [
        # The document type is the resource's code: it is that document, or another one.
        (RequestedResource(type="DocumentReference", codes=(PROGRESS_NOTE,)), DecisionOutcome.DENY),
        (
            RequestedResource(type="DocumentReference", codes=(Coding(LOINC, "11488-4"),)),
            DecisionOutcome.PERMIT,
        ),
        # An Observation coded otherwise is no progress note.
        (
            RequestedResource(type="Observation", codes=(Coding(LOINC, "89204-2"),)),
            DecisionOutcome.PERMIT,
        ),
        # Nothing says which document it is: a missing fact, which a deny meets.
        (RequestedResource(type="DocumentReference"), DecisionOutcome.DENY),
        (RequestedResource(), DecisionOutcome.DENY),
    ],
)
def test_a_document_type_class_is_compared_with_the_resource_codes(
    resource: RequestedResource, outcome: DecisionOutcome
) -> None:
    """A class that is neither a resource type nor a profile (a document type) names what the
    content is, as a code does: it meets a resource with that code, not one with other codes, and
    counts for a deny when the resource's codes are unknown."""
    decision = ConsentEngine([_sharing_except(PROGRESS_NOTE)]).decide(_request(resource))
    assert decision.outcome is outcome


def test_a_permit_by_document_type_needs_the_code() -> None:
    """A permit scoped to a document type releases content with that code only, never content
    whose codes are unknown (a missing fact never widens access)."""
    permit = consent(
        "c1",
        "permit",
        **share_with(Ref(reference="Organization/ehr"), classes=[PROGRESS_NOTE]),
    )
    engine = ConsentEngine([permit])
    note = RequestedResource(type="DocumentReference", codes=(PROGRESS_NOTE,))
    assert engine.decide(_request(note)).outcome is DecisionOutcome.PERMIT
    unknown = RequestedResource(type="DocumentReference")
    assert engine.decide(_request(unknown)).outcome is not DecisionOutcome.PERMIT


def test_resource_type_and_profile_classes_are_read_as_before() -> None:
    """A resource-type class and a profile URL class are not document types."""
    profile = "https://fhir-alliance.org/fhir/StructureDefinition/alliance-score"
    record = _sharing_except(Coding(RESOURCE_TYPES, "Observation"))
    engine = ConsentEngine([record])
    observation = RequestedResource(type="Observation", codes=(Coding(LOINC, "89204-2"),))
    assert engine.decide(_request(observation)).outcome is DecisionOutcome.DENY
    other = RequestedResource(type="QuestionnaireResponse")
    assert engine.decide(_request(other)).outcome is DecisionOutcome.PERMIT
    by_profile = ConsentEngine(
        [_sharing_except(Coding("http://hl7.org/fhir/StructureDefinition", profile))]
    )
    unprofiled = RequestedResource(type="Observation")
    assert by_profile.decide(_request(unprofiled)).outcome is DecisionOutcome.PERMIT
    assert (
        by_profile.decide(
            _request(RequestedResource(type="Observation", profiles=(profile,)))
        ).outcome
        is DecisionOutcome.DENY
    )


# --- the gate: a document's type is its code -------------------------------------------------------

US_CORE_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
NOTE_CONTENT = "https://fhir-alliance.org/fhir/CodeSystem/session-note-content"


def _document(resource_type: str = "DocumentReference", **elements: Any) -> dict[str, Any]:
    return {
        "resourceType": resource_type,
        "id": "d1",
        "status": "current",
        "subject": {"reference": "Patient/p1"},
        "date": "2025-05-01T10:00:00Z",
        **elements,
    }


@pytest.mark.parametrize("resource_type", ["DocumentReference", "Composition"])
def test_the_gate_reads_a_documents_type_and_category_as_its_codes(resource_type: str) -> None:
    """A document says what it is in ``type`` (and ``category``), not in ``code``: both are its
    codes, so a consent scoped by document type (or by ``code``) sees them. Systems are read in
    canonical form (LOINC by OID is LOINC)."""
    document = _document(
        resource_type,
        type={
            "coding": [
                {"system": "urn:oid:2.16.840.1.113883.6.1", "code": "34904-3"},
                {"system": NOTE_CONTENT, "code": "progress-note"},
            ]
        },
        category=[{"coding": [{"system": US_CORE_CATEGORY, "code": "clinical-note"}]}],
    )
    facts = requested_resource(document)
    assert facts.codes == (
        PROGRESS_NOTE,
        Coding(NOTE_CONTENT, "progress-note"),
        Coding(US_CORE_CATEGORY, "clinical-note"),
    )


def test_a_document_without_a_type_has_unknown_codes() -> None:
    """A category alone does not say which document it is: the codes stay unknown (a deny by
    document type applies, a permit by it does not), never the category as if it were all."""
    untyped = _document(
        category=[{"coding": [{"system": US_CORE_CATEGORY, "code": "clinical-note"}]}]
    )
    assert requested_resource(untyped).codes == ()
    assert requested_resource(_document(type={"text": "progress note"})).codes == ()


@pytest.mark.parametrize(
    ("elements", "path"),
    [
        ({"type": {"coding": [{"system": LOINC, "code": " 34904-3"}]}}, "type.coding[0]"),
        ({"type": {"coding": "34904-3"}}, "type.coding"),
        ({"type": {"coding": [{"system": LOINC, "code": "x"}]}, "category": {}}, "category"),
        (
            {"type": {"coding": [PROGRESS_NOTE.to_fhir()]}, "category": [{"coding": [7]}]},
            "category[0].coding[0]",
        ),
        ({"type": {"coding": [PROGRESS_NOTE.to_fhir()]}, "category": ["x"]}, "category[0]"),
    ],
)
def test_a_malformed_document_type_is_refused_at_its_path(
    elements: dict[str, Any], path: str
) -> None:
    """A type or category coding that cannot be read could be the one a deny names: the
    resource is refused, never read as if the coding were not there."""
    with pytest.raises(InputError) as caught:
        requested_resource(_document(**elements))
    assert [i.path for i in caught.value.issues] == [path]


def test_a_deny_by_document_type_spelt_by_oid_meets_the_note() -> None:
    """A consent naming LOINC by its OID names the same document type."""
    record = _sharing_except(Coding("urn:oid:2.16.840.1.113883.6.1", "34904-3"))
    assert ConsentEngine([record]).decide(_note_request()).outcome is DecisionOutcome.DENY


def test_a_deny_by_session_note_content_keeps_only_psychotherapy_notes() -> None:
    """The second coding of a session note's type says its content: a deny of psychotherapy-note
    content keeps those notes and lets progress notes go."""
    engine = ConsentEngine([_sharing_except(Coding(NOTE_CONTENT, "psychotherapy-note"))])
    for content, outcome in (
        ("psychotherapy-note", DecisionOutcome.DENY),
        ("progress-note", DecisionOutcome.PERMIT),
    ):
        codes = (PROGRESS_NOTE, Coding(NOTE_CONTENT, content))
        resource = RequestedResource(type="DocumentReference", codes=codes)
        assert engine.decide(_request(resource)).outcome is outcome, content


# --- the general answer ----------------------------------------------------------------------------


def _general(*classes: Coding) -> DecisionRequest:
    return DecisionRequest(
        patient=(Ref(reference="Patient/p1"),),
        actors=(RequestActor(Ref(reference="Organization/ehr"), IRCP),),
        at=AT,
        purposes=(pou("TREAT"),),
        action=Coding(f"{V3}/consentaction", "access"),
        content_classes=classes,
    )


def test_the_general_answer_redacts_a_document_type_the_consent_denies() -> None:
    """Asked without a resource, "share, but not my progress notes" is a permit with the
    redaction of that document type (as a nested deny by resource type or label is), never a
    plain permit: a resource it covers would be denied."""
    engine = ConsentEngine([_sharing_except(PROGRESS_NOTE)])
    answer = engine.decide(_general())
    assert answer.outcome is DecisionOutcome.PERMIT
    redactions = [o for o in answer.obligations if o.mode is RedactMode.MATCHING and o.classes]
    assert [o.classes for o in redactions] == [(PROGRESS_NOTE,)]
    assert [b.path for o in redactions for b in o.basis] == ["0"]


def test_asking_only_about_the_denied_document_type_is_a_deny() -> None:
    """Asked about progress notes alone, the redaction would remove everything: deny. Asked
    about Observations, the deny may concern them too (an Observation may carry that code):
    the redaction comes with the permit."""
    engine = ConsentEngine([_sharing_except(PROGRESS_NOTE)])
    assert engine.decide(_general(PROGRESS_NOTE)).outcome is DecisionOutcome.DENY
    asked = engine.decide(_general(Coding(RESOURCE_TYPES, "Observation")))
    assert asked.outcome is DecisionOutcome.PERMIT
    assert any(PROGRESS_NOTE in o.classes for o in asked.obligations)


def test_a_general_permit_by_document_type_keeps_only_that_type() -> None:
    """Deny everything but progress notes: asked in general, a permit that keeps only that
    document type; asked about a resource, only a resource with that code is permitted."""
    permit_notes = consent(
        "c1",
        "deny",
        prov("permit", classes=[PROGRESS_NOTE]),
        **share_with(Ref(reference="Organization/ehr")),
    )
    engine = ConsentEngine([permit_notes])
    answer = engine.decide(_general())
    assert answer.outcome is DecisionOutcome.PERMIT
    keep = [o for o in answer.obligations if o.mode is RedactMode.ALL_EXCEPT]
    assert [o.classes for o in keep] == [(PROGRESS_NOTE,)]
    note = RequestedResource(type="DocumentReference", codes=(PROGRESS_NOTE,))
    assert engine.decide(_request(note)).outcome is DecisionOutcome.PERMIT
    for other in (RequestedResource(type="DocumentReference"), RequestedResource()):
        assert engine.decide(_request(other)).outcome is DecisionOutcome.DENY
