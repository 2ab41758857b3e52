"""The audit builders: BALP-shaped AuditEvents and Provenance, valid R4, deterministic, no free text."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from fhir_alliance_service import audit
from fhir_alliance_service.store.interface import SentResource

from fhir_alliance.mapping.validation import validate_resource

AT = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)
RECORD = "0b0e5f3e-1111-5222-8333-444455556666"
PATIENT_TOKEN = "https://clinic.example/mrn|MRN-778899"


def _codes(codings: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in codings}


def test_intake_event_is_a_valid_balp_create_with_the_patient_entity() -> None:
    """A first version is a RESTful create with the patient and the record as entities."""
    entry = audit.intake_event(RECORD, "Patient/p1", "srs", 1, AT)
    resource = dict(entry.resource)
    validate_resource(resource)
    assert entry.action == "intake" and entry.record_id == RECORD and entry.patient == "Patient/p1"
    assert resource["action"] == "C"
    assert _codes(resource["subtype"]) == {(audit.RESTFUL_INTERACTION, "create")}
    patient, record = resource["entity"]
    assert patient["what"] == {"reference": "Patient/p1", "type": "Patient"}
    assert patient["role"]["code"] == "1"
    assert record["what"]["identifier"] == {
        "system": audit.RECORD_IDENTIFIER_SYSTEM,
        "value": RECORD,
    }
    assert resource["recorded"] == "2026-03-04T10:30:00.000Z"


def test_intake_of_a_later_version_is_an_update() -> None:
    """Version 2 of a record is audited as an update, with a different id from version 1."""
    first = audit.intake_event(RECORD, "Patient/p1", "srs", 1, AT).resource
    second = audit.intake_event(RECORD, "Patient/p1", "srs", 2, AT).resource
    assert second["action"] == "U"
    assert _codes(second["subtype"]) == {(audit.RESTFUL_INTERACTION, "update")}
    assert first["id"] != second["id"]


def test_disclosure_event_follows_the_balp_privacy_disclosure_source_pattern() -> None:
    """Export / disclose / R, source agent = the service = audit source, recipient agent, purpose."""
    sent = [SentResource("Observation", "obs-1", "3")]
    resource = dict(
        audit.disclosure_event(
            RECORD,
            PATIENT_TOKEN,
            1,
            sent,
            AT,
            recipient="Organization/clinic-ehr",
            purpose="TREAT",
            target_url="https://ehr.example/fhir",
        ).resource
    )
    validate_resource(resource)
    assert resource["type"] == {"system": audit.DCM, "code": "110106"}
    assert _codes(resource["subtype"]) == {(audit.ISO_21089_LIFECYCLE, "disclose")}
    assert resource["action"] == "R" and resource["outcome"] == "0"
    source_agent, recipient_agent = resource["agent"]
    assert source_agent["type"]["coding"][0]["code"] == "110153"
    assert source_agent["who"] == resource["source"]["observer"] == audit.SYNC_DEVICE
    assert recipient_agent["type"]["coding"][0]["code"] == "110152"
    assert recipient_agent["who"] == {"reference": "Organization/clinic-ehr"}
    assert resource["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    patient = resource["entity"][0]
    assert patient["what"]["identifier"] == {
        "system": "https://clinic.example/mrn",
        "value": "MRN-778899",
    }
    assert resource["entity"][2]["what"]["reference"] == "Observation/obs-1"


def test_a_disclosure_by_a_two_way_step_is_the_sends_event_under_an_id_of_its_own() -> None:
    """A reconcile write's disclosure has the send's shape, but an id naming the step, the
    resources and the time: pushed, it never replaces the send's event, nor an earlier repair's;
    a step that writes nothing is refused."""

    def event(when: datetime, step: str | None) -> dict[str, object]:
        return dict(
            audit.disclosure_event(
                RECORD,
                "Patient/p1",
                1,
                [SentResource("Observation", "obs-1", "4")],
                when,
                recipient="Organization/clinic-ehr",
                purpose="TREAT",
                target_url="https://ehr.example/fhir",
                step=step,
            ).resource
        )

    send, repair = event(AT, None), event(AT, "reconcile-write")
    validate_resource(repair)
    assert repair["id"] != send["id"]
    assert {k: v for k, v in repair.items() if k != "id"} == {
        k: v for k, v in send.items() if k != "id"
    }
    assert event(AT + timedelta(days=1), "reconcile-write")["id"] != repair["id"]
    assert event(AT, "reconcile-write")["id"] == repair["id"]
    with pytest.raises(ValueError, match="writes no resource version"):
        event(AT, "reconcile-delete")


def test_hold_event_records_the_reason_code_and_a_failure_outcome() -> None:
    """A held decision is a disclosure that did not happen: outcome 4, reason code, no data entity."""
    resource = dict(
        audit.hold_event(
            RECORD, "Patient/p1", 1, "no-consent", AT, recipient="Organization/x", purpose="TREAT"
        ).resource
    )
    validate_resource(resource)
    assert resource["outcome"] == "4"
    assert resource["outcomeDesc"] == "no-consent"
    assert len(resource["entity"]) == 2


def test_each_held_decision_is_its_own_event() -> None:
    """Holding the same record again later gives a new AuditEvent id (one per decision)."""
    first = audit.hold_event(RECORD, "P/1", 1, "no-consent", AT, recipient="O/x", purpose="TREAT")
    later = audit.hold_event(
        RECORD, "P/1", 1, "no-consent", AT + timedelta(minutes=1), recipient="O/x", purpose="TREAT"
    )
    assert first.resource["id"] != later.resource["id"]


def test_a_hold_by_a_two_way_step_is_the_workers_hold_under_an_id_of_its_own() -> None:
    """A held reconcile write is the worker's hold event (same shape, reason and outcome), under
    an id naming the step: the worker holding the same record version at the same instant never
    takes it; a step that writes nothing is refused."""

    def event(step: str | None) -> dict[str, object]:
        return dict(
            audit.hold_event(
                RECORD, "P/1", 1, "no-consent", AT, recipient="O/x", purpose="TREAT", step=step
            ).resource
        )

    worker, repair = event(None), event("reconcile-write")
    validate_resource(repair)
    assert repair["id"] != worker["id"]
    assert {k: v for k, v in repair.items() if k != "id"} == {
        k: v for k, v in worker.items() if k != "id"
    }
    assert event("reconcile-write")["id"] == repair["id"]
    with pytest.raises(ValueError, match="writes no resource version"):
        event("reconcile-delete")


def test_dead_letter_event_is_a_serious_failure_with_the_status() -> None:
    """A dead-lettered disclosure has outcome 8 and names the HTTP status only."""
    resource = dict(
        audit.dead_letter_event(
            RECORD, "Patient/p1", 1, AT, recipient="O/x", purpose="TREAT", status=422
        ).resource
    )
    validate_resource(resource)
    assert resource["outcome"] == "8" and resource["outcomeDesc"] == "http-422"


def test_provenance_one_per_pushed_resource_with_device_agent_and_source_entity() -> None:
    """Each pushed resource gets a Provenance targeting its version, by the service, from the record."""
    sent = [SentResource("Observation", "a", "2"), SentResource("Observation", "b", None)]
    entries = audit.provenance(sent, RECORD, AT, patient="Patient/p1", version=1)
    assert [e.action for e in entries] == ["provenance", "provenance"]
    first, second = (dict(e.resource) for e in entries)
    validate_resource(first)
    assert first["target"] == [{"reference": "Observation/a/_history/2"}]
    assert second["target"] == [{"reference": "Observation/b"}]
    assert first["agent"][0]["who"] == audit.SYNC_DEVICE
    assert first["agent"][0]["type"]["coding"][0]["code"] == "assembler"
    assert first["entity"] == [
        {
            "role": "source",
            "what": {"identifier": {"system": audit.RECORD_IDENTIFIER_SYSTEM, "value": RECORD}},
        }
    ]
    assert first["id"] != second["id"]


def test_a_two_way_write_has_its_own_provenance_of_the_version_written() -> None:
    """A retraction's or reconcile's write: a valid Provenance of the server's version written,
    by the service, from the record, revising the version it replaced; its id is neither the
    disclosure Provenance's of the same resource nor another version's."""
    written = SentResource("Observation", "a", "3")
    entry = audit.write_provenance(
        "retract-entered-in-error",
        written,
        RECORD,
        AT,
        patient="Patient/p1",
        version=2,
        activity="UPDATE",
        revises="2",
    )
    resource = dict(entry.resource)
    validate_resource(resource)
    assert (entry.action, entry.record_id, entry.patient) == ("provenance", RECORD, "Patient/p1")
    assert resource["target"] == [{"reference": "Observation/a/_history/3"}]
    assert _codes(resource["activity"]["coding"]) == {(audit.DATA_OPERATION, "UPDATE")}
    [disclosed] = audit.provenance([written], RECORD, AT, patient="Patient/p1", version=2)
    assert resource["agent"] == disclosed.resource["agent"]
    assert resource["entity"] == [
        *disclosed.resource["entity"],
        {"role": "revision", "what": {"reference": "Observation/a/_history/2"}},
    ]
    assert resource["id"] != disclosed.resource["id"]
    again = audit.write_provenance(
        "retract-entered-in-error",
        SentResource("Observation", "a", "4"),
        RECORD,
        AT,
        patient="Patient/p1",
        version=2,
        activity="UPDATE",
    )
    assert again.resource["id"] != resource["id"]
    with pytest.raises(ValueError, match="writes no resource version"):
        audit.write_provenance(
            "retract-delete", written, RECORD, AT, patient="P/1", version=2, activity="DELETE"
        )


def test_ids_are_deterministic_so_a_repush_writes_the_same_resource() -> None:
    """Building the same disclosure twice gives the same id (PUT after a lost answer is harmless)."""
    sent = [SentResource("Observation", "a", "1")]
    build = lambda: audit.disclosure_event(  # noqa: E731
        RECORD, "Patient/p1", 1, sent, AT, recipient="O/x", purpose="TREAT"
    )
    assert build().resource == build().resource
    assert (
        audit.provenance(sent, RECORD, AT, patient="P/1", version=1)[0].resource["id"]
        == audit.provenance(sent, RECORD, AT, patient="P/1", version=1)[0].resource["id"]
    )


def test_times_are_converted_to_utc_and_naive_times_refused() -> None:
    """A time with an offset is recorded in UTC; a naive time is an error, not a guess."""
    plus_two = AT.astimezone(timezone(timedelta(hours=2)))
    assert audit.intake_event(RECORD, "P/1", "srs", 1, plus_two).resource["recorded"] == (
        "2026-03-04T10:30:00.000Z"
    )
    with pytest.raises(ValueError, match="timezone"):
        audit.intake_event(RECORD, "P/1", "srs", 1, datetime(2026, 1, 1))


def test_no_builder_writes_free_text_or_a_display_name() -> None:
    """No narrative, no display, no name/description fields anywhere in what the builders make."""
    sent = [SentResource("Observation", "a", "1")]
    resources = [
        audit.intake_event(RECORD, "P/1", "srs", 1, AT).resource,
        audit.disclosure_event(
            RECORD, "P/1", 1, sent, AT, recipient="O/x", purpose="TREAT"
        ).resource,
        audit.hold_event(
            RECORD, "P/1", 1, "no-consent", AT, recipient="O/x", purpose="TREAT"
        ).resource,
        *(e.resource for e in audit.provenance(sent, RECORD, AT, patient="P/1", version=1)),
        audit.write_provenance(
            "reconcile-write", sent[0], RECORD, AT, patient="P/1", version=1, activity="CREATE"
        ).resource,
    ]
    text = json.dumps(resources)
    for forbidden in ('"text"', '"display"', '"name"', '"description"'):
        assert forbidden not in text
