"""QuestionnaireResponse → Observations with SDC observation-based extraction semantics."""

import copy

import pytest

from fhir_alliance.errors import MappingError
from fhir_alliance.mapping.observation import MAPPER
from fhir_alliance.mapping.questionnaire import (
    observations_from_questionnaire_response,
    records_from_questionnaire_response,
)
from fhir_alliance.model.observations import DimensionRating, InstrumentAdministration, RaterRole

QR_ID = {"system": "https://clinic.example.org/qr", "value": "qr-7"}


def _wai_sr_qr() -> dict:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": "qr-7",
        "identifier": QR_ID,
        "questionnaire": "https://fhir-alliance.org/fhir/Questionnaire/wai-sr|0.1.0",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "authored": "2026-11-20T16:00:00+01:00",
        "author": {"reference": "Patient/p1"},
        "item": [
            {
                "linkId": "group",
                "item": [{"linkId": str(n), "answer": [{"valueInteger": 4}]} for n in range(1, 12)],
            },
            {"linkId": "12"},
        ],
    }


def _dimensions_qr() -> dict:
    return {
        "resourceType": "QuestionnaireResponse",
        "identifier": QR_ID,
        "questionnaire": "https://fhir-alliance.org/fhir/Questionnaire/alliance-dimensions",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-11-20T16:00:00+00:00",
        "item": [
            {"linkId": "trust", "answer": [{"valueInteger": 5}]},
            {"linkId": "respect"},
            {"linkId": "feedback", "answer": [{"valueString": "free text from the client"}]},
        ],
    }


def test_items_become_observations_with_qr_context() -> None:
    """Answered items give item Observations; effective = authored, performer = author, derivedFrom = QR."""
    resources = observations_from_questionnaire_response(_wai_sr_qr())
    panel, *members = resources
    codes = [m["code"]["coding"][0]["code"] for m in members]
    assert "wai-sr.12" not in codes  # unanswered: no Observation
    assert [c for c in codes if c.split(".")[1].isdigit()] == [f"wai-sr.{n}" for n in range(1, 12)]
    for r in resources:
        assert r["effectiveDateTime"] == "2026-11-20T16:00:00+01:00"
        assert r["performer"] == [{"reference": "Patient/p1"}]
        assert r["derivedFrom"][0]["reference"] == "QuestionnaireResponse/qr-7"
        assert r["encounter"] == {"reference": "Encounter/e1"}
    assert panel["identifier"] == [QR_ID]


def test_task_subscale_is_prorated_when_item_12_is_missing() -> None:
    """Item 12 (task) missing: task is prorated from 3 items, the total is still computed."""
    [record] = records_from_questionnaire_response(_wai_sr_qr())
    assert isinstance(record, InstrumentAdministration) and len(record.responses) == 11
    resources = observations_from_questionnaire_response(_wai_sr_qr())
    task = next(r for r in resources if r["code"]["coding"][0]["code"] == "wai-sr.task")
    assert (
        task["valueQuantity"]["value"] == 16 and task["method"]["coding"][0]["code"] == "prorated"
    )


def test_dimension_items_become_ratings_and_free_text_is_never_extracted() -> None:
    """Seed-dimension answers become ratings with derived ids; the feedback text appears nowhere."""
    records = records_from_questionnaire_response(_dimensions_qr())
    assert len(records) == 1
    [rating] = records
    assert isinstance(rating, DimensionRating)
    assert rating.id.value == "qr-7#trust" and rating.rater.role is RaterRole.CLIENT
    resources = observations_from_questionnaire_response(_dimensions_qr())
    assert "free text" not in str(resources)


def test_r5_identifier_list_is_read() -> None:
    """An R5 QuestionnaireResponse (identifier 0..*) is read the same way."""
    qr = _dimensions_qr()
    qr["identifier"] = [QR_ID]
    assert records_from_questionnaire_response(qr)[0].id.value == "qr-7#trust"


def test_mapper_reads_questionnaire_responses() -> None:
    """MAPPER.from_fhir extracts records from QRs given among other resources."""
    records = MAPPER.from_fhir([_dimensions_qr()])
    assert [type(r) for r in records] == [DimensionRating]


@pytest.mark.parametrize(
    ("mutate", "element"),
    [
        (lambda q: q.__setitem__("status", "in-progress"), "QuestionnaireResponse.status"),
        (lambda q: q.pop("identifier"), "QuestionnaireResponse.identifier"),
        (
            lambda q: q.__setitem__("questionnaire", "http://example.org/Questionnaire/phq-9"),
            "QuestionnaireResponse.questionnaire",
        ),
        (
            lambda q: q["item"][0]["item"][0]["answer"][0].__setitem__("valueInteger", 6),
            "QuestionnaireResponse.item[0].item[0].answer[0]",
        ),
        (
            lambda q: q["item"][0]["item"][0]["answer"].append({"valueInteger": 3}),
            "QuestionnaireResponse.item[0].item[0].answer",
        ),
        (
            lambda q: q.__setitem__("author", {"reference": "Device/d1"}),
            "QuestionnaireResponse.author",
        ),
        (lambda q: q.__setitem__("authored", "2026-11-20"), "QuestionnaireResponse.authored"),
        (
            lambda q: q["item"].append({"linkId": "13", "answer": [{"valueInteger": 3}]}),
            "QuestionnaireResponse.item[2].linkId",
        ),
    ],
)
def test_unfit_questionnaire_response_names_the_element(mutate, element: str) -> None:
    """QRs that cannot be extracted raise MappingError at the element."""
    qr = copy.deepcopy(_wai_sr_qr())
    mutate(qr)
    with pytest.raises(MappingError) as exc:
        records_from_questionnaire_response(qr)
    assert exc.value.element == element


def test_therapist_form_takes_the_practitioner_author_as_rater() -> None:
    """A WAI-SR-T response authored by a practitioner reads as a therapist rating by that person."""
    qr = _wai_sr_qr()
    qr["questionnaire"] = "https://fhir-alliance.org/fhir/Questionnaire/wai-sr-t"
    qr["author"] = {"reference": "Practitioner/t1"}
    [record] = records_from_questionnaire_response(qr)
    assert (
        record.rater.role is RaterRole.THERAPIST and record.rater.who.reference == "Practitioner/t1"
    )


V3 = "http://terminology.hl7.org/CodeSystem"


@pytest.mark.parametrize("make_qr", [_wai_sr_qr, _dimensions_qr])
def test_the_labels_of_the_questionnaire_response_reach_every_observation(make_qr) -> None:
    """A QR labelled SUD (and R, BH) by the system that took it in: every record extracted keeps
    SUD (R and BH are the mapping's own), so every Observation carries it and a consent denying
    SUD still catches them. Found: the QR's labels were dropped at extraction."""
    qr = make_qr()
    qr["meta"] = {
        "security": [
            {"system": f"{V3}/v3-Confidentiality", "code": "R"},
            {"system": "urn:oid:2.16.840.1.113883.5.4", "code": "SUD"},
        ]
    }
    records = records_from_questionnaire_response(qr)
    assert records
    for record in records:
        assert [(c.system, c.code) for c in record.security_labels] == [(f"{V3}/v3-ActCode", "SUD")]
    for resource in observations_from_questionnaire_response(qr):
        assert {"system": f"{V3}/v3-ActCode", "code": "SUD"} in resource["meta"]["security"]


def test_a_label_of_the_questionnaire_response_that_cannot_be_kept_is_refused() -> None:
    """A label the engine cannot read, or a confidentiality below R, is refused at its element."""
    qr = _wai_sr_qr()
    qr["meta"] = {"security": [{"system": f"{V3}/v3-Confidentiality", "code": "N"}]}
    with pytest.raises(MappingError) as caught:
        records_from_questionnaire_response(qr)
    assert caught.value.element == "QuestionnaireResponse.meta.security[0]"
