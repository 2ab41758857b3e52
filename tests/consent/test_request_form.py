"""Our JSON request form: loads to a DecisionRequest, refuses bad input by field path."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_alliance.consent.decision import DEFAULT_ACTOR_ROLE, DecisionRequest, RequestActor
from fhir_alliance.consent.request_form import load_decision_request
from fhir_alliance.errors import InputError
from fhir_alliance.model.common import Ref
from fhir_alliance.terminology import CONSENT_ACTION, V3_ACT_CODE, V3_ACT_REASON, V3_CONFIDENTIALITY

BASE: dict[str, Any] = {
    "patient": {"reference": "Patient/p1"},
    "actors": [{"reference": "Practitioner/a"}],
    "at": "2025-06-01T09:00:00Z",
}


def paths(exc: InputError) -> set[str]:
    return {i.path for i in exc.issues}


def test_short_codes_expand_to_their_systems() -> None:
    """Bare purpose, action and label codes get v3-ActReason, consentaction and label systems."""
    request = load_decision_request(
        {
            **BASE,
            "purposes": ["TREAT"],
            "action": "disclose",
            "resource": {"type": "Observation", "labels": ["R", "PSYTHPN"]},
        }
    )
    assert [(c.system, c.code) for c in request.purposes] == [(V3_ACT_REASON, "TREAT")]
    assert request.action is not None and request.action.system == CONSENT_ACTION
    assert request.resource is not None
    assert [(c.system, c.code) for c in request.resource.labels] == [
        (V3_CONFIDENTIALITY, "R"),
        (V3_ACT_CODE, "PSYTHPN"),
    ]


def test_actor_role_defaults_to_ircp() -> None:
    """An actor without a role is an information recipient."""
    request = load_decision_request(BASE)
    assert request.actors == (RequestActor(Ref(reference="Practitioner/a"), DEFAULT_ACTOR_ROLE),)


def test_missing_time_filled_by_caller() -> None:
    """A request without ``at`` takes the time the caller passes (the CLI: now)."""
    now = datetime(2025, 7, 1, tzinfo=UTC)
    data = {k: v for k, v in BASE.items() if k != "at"}
    assert load_decision_request(data, at=now).at == now
    with pytest.raises(InputError) as info:
        load_decision_request(data)
    assert paths(info.value) == {"at"}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"actors": []}, "actors"),
        ({"actors": [{}]}, "actors.0"),
        ({"at": "2025-06-01T09:00:00"}, "at"),
        ({"purposes": [""]}, "purposes.0"),
        ({"action": {"system": "x"}}, "action.code"),
        ({"resource": {"labels": [7]}}, "resource.labels.0"),
        ({"resource": {"date": "yesterday"}}, "resource.date"),
        ({"resource": {"colour": "red"}}, "resource.colour"),
        ({"surprise": 1}, "surprise"),
        ({"patient": "Patient/p1"}, "patient"),
        (
            {
                "content_classes": [
                    {"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}
                ],
                "resource": {"type": "Observation"},
            },
            "content_classes",
        ),
    ],
)
def test_bad_field_is_named(change: dict[str, Any], path: str) -> None:
    """Each bad field is refused with its path."""
    with pytest.raises(InputError) as info:
        load_decision_request({**BASE, **change})
    assert path in paths(info.value)


def test_not_an_object() -> None:
    """A JSON array is refused at the root."""
    with pytest.raises(InputError):
        load_decision_request([BASE])


def test_naive_time_refused_by_the_request_type() -> None:
    """DecisionRequest itself refuses a request time without offset (path ``at``)."""
    with pytest.raises(InputError) as info:
        DecisionRequest(patient=(Ref(reference="Patient/p1"),), actors=(), at=datetime(2025, 6, 1))
    assert paths(info.value) == {"at"}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"action": "acess"}, "action"),
        ({"action": "ACCESS"}, "action"),
        ({"action": ""}, "action"),
        ({"action": {"system": CONSENT_ACTION, "code": "acess"}}, "action"),
        ({"action": {"system": "urn:other", "code": "access"}}, "action"),
        ({"purposes": ["TRAET"]}, "purposes.0"),
        ({"purposes": ["TREAT", "treat"]}, "purposes.1"),
        ({"purposes": [{"system": "urn:other", "code": "TREAT"}]}, "purposes.0"),
    ],
)
def test_unknown_codes_are_refused(change: dict[str, Any], path: str) -> None:
    """Actions outside consentaction and purposes outside v3 PurposeOfUse are refused by path."""
    with pytest.raises(InputError) as info:
        load_decision_request({**BASE, **change})
    assert paths(info.value) == {path}
    assert "acess" not in str(info.value) and "TRAET" not in str(info.value)


def test_known_codes_as_codings_are_accepted() -> None:
    """A full coding of a known action or purpose loads as given."""
    request = load_decision_request(
        {
            **BASE,
            "action": {"system": CONSENT_ACTION, "code": "access"},
            "purposes": [{"system": V3_ACT_REASON, "code": "ETREAT"}],
        }
    )
    assert request.action is not None and request.action.code == "access"
    assert [p.code for p in request.purposes] == ["ETREAT"]
