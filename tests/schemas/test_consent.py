"""The JSON form of consents and revocations: examples load, errors name field paths, revocation appends."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from fhir_alliance.errors import InputError
from fhir_alliance.model.common import Identifier
from fhir_alliance.model.consent import (
    ConsentRecord,
    ConsentRevocation,
    ConsentStatus,
    apply_revocation,
)
from fhir_alliance.schemas.consent import (
    dump_consent,
    dump_revocation,
    load_consent,
    load_consent_records,
    load_revocation,
)
from fhir_alliance.terminology import RESOURCE_TYPES
from tests.mapping.consent_strategies import consent_records

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "consent").glob("*.json"))
REVOCATIONS = sorted((ROOT / "examples" / "consent" / "revocation").glob("*.json"))
SHARING_ID = Identifier("https://clinic.example.org/consents", "c-2025-0001")


def _sharing() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "examples/consent/sharing.json").read_text())
    return data


def _revocation() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(REVOCATIONS[0].read_text())
    return data


def _paths(exc: pytest.ExceptionInfo[InputError]) -> set[str]:
    return {issue.path for issue in exc.value.issues}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_loads_and_dumps_back(path: Path) -> None:
    """Each shipped example loads, and dumping then loading gives the same record."""
    record = load_consent(json.loads(path.read_text()))
    assert load_consent(dump_consent(record)) == record


def test_examples_cover_every_kind() -> None:
    """The examples include at least one consent of every kind and a revocation."""
    kinds = {load_consent(json.loads(p.read_text())).kind.value for p in EXAMPLES}
    assert kinds == {"sharing", "treatment", "recording", "restriction"}
    assert REVOCATIONS


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(consent_records())
def test_dump_load_round_trip(record: ConsentRecord) -> None:
    """load(dump(record)) == record for any valid record."""
    assert load_consent(dump_consent(record)) == record


def test_period_ending_before_start_is_refused_at_its_path() -> None:
    """A consent period that ends before it starts is an error at period.end."""
    data = _sharing()
    data["period"] = {"start": "2025-03-01T00:00:00+00:00", "end": "2025-02-01T00:00:00+00:00"}
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"period.end"}


def test_data_period_in_nested_provision_is_checked() -> None:
    """A nested provision's dataPeriod is checked the same way, with the full path."""
    data = _sharing()
    data["provision"]["provisions"][2]["data_period"] = {
        "start": "2025-01-01T00:00:00+00:00",
        "end": "2024-01-01T00:00:00+00:00",
    }
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"provision.provisions.2.data_period.end"}


def test_unknown_purpose_code_is_refused() -> None:
    """A purpose of use outside the v3 PurposeOfUse list is an error at its code."""
    data = _sharing()
    data["provision"]["purposes"][1]["code"] = "MARKETING"
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"provision.purposes.1.code"}


def test_purpose_from_another_system_is_refused() -> None:
    """A purpose code from a system other than v3-ActReason is an error at its system."""
    data = _sharing()
    data["provision"]["purposes"][0]["system"] = (
        "http://terminology.hl7.org/ValueSet/v3-PurposeOfUse"
    )
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"provision.purposes.0.system"}


@pytest.mark.parametrize(
    ("where", "value", "path"),
    [
        (("categories", 0, "code"), "59284-6", "categories.0.code"),
        (("provision", "actions", 0, "code"), "share", "provision.actions.0.code"),
        (
            ("provision", "provisions", 1, "security_labels", 0, "code"),
            "NOPE",
            "provision.provisions.1.security_labels.0.code",
        ),
        (("status",), "withdrawn", "status"),
        (("consent_kind",), "research", "consent_kind"),
        (("provision", "provisions", 0, "type"), "maybe", "provision.provisions.0.type"),
        (("date",), "2025-03-01T10:15:00", "date"),
        (("date",), "2999-01-01T00:00:00+00:00", "date"),
        (("id",), "no-bar", "id"),
    ],
)
def test_bad_codes_and_values_are_refused_at_their_path(
    where: tuple[Any, ...], value: Any, path: str
) -> None:
    """Invalid codes and values give one issue at the exact field path."""
    data = _sharing()
    target: Any = data
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {path}


def test_unknown_fields_are_refused_everywhere() -> None:
    """Unknown fields at the top, in a provision and in a nested object are each reported."""
    data = _sharing()
    data["colour"] = "blue"
    data["provision"]["provisions"][0]["note"] = "x"
    data["verification"][0]["signature"] = "x"
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"colour", "provision.provisions.0.note", "verification.0.signature"}


def test_nested_provision_needs_a_type() -> None:
    """A nested provision without a type is an error at its type."""
    data = _sharing()
    del data["provision"]["provisions"][0]["type"]
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"provision.provisions.0.type"}


def test_root_type_must_equal_decision_and_root_has_no_period() -> None:
    """The root provision's type, if given, equals decision; its time frame is the consent period."""
    data = _sharing()
    data["provision"]["type"] = "deny"
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"provision.type"}
    data = _sharing()
    data["provision"]["period"] = {"start": "2025-01-01T00:00:00+00:00"}
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"provision.period"}


def test_history_must_end_in_the_current_status() -> None:
    """The last status change must match status, and changes must be in time order."""
    data = _sharing()
    data["status"] = "revoked"
    data["history"][0]["at"] = "2025-03-02T00:00:00+01:00"
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"status", "history.1.at"}


def test_kind_specific_rules() -> None:
    """Treatment needs an intervention; others must not have one; recording names its actions."""
    data = _sharing()
    data["intervention"] = {"system": "http://snomed.info/sct", "code": "304891004"}
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"intervention"}
    data = _sharing()
    data["consent_kind"] = "treatment"
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"intervention"}
    data = _sharing()
    data["consent_kind"] = "recording"
    del data["provision"]["actions"]
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"provision.actions"}


def test_policy_basis_rules() -> None:
    """At least one policy basis; each is a code or a document; at most one of each."""
    data = _sharing()
    data["policy_basis"] = []
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"policy_basis"}
    data["policy_basis"] = [
        {"uri": "https://a.example/p", "code": {"system": "urn:x", "code": "y"}}
    ]
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"policy_basis.0"}
    data["policy_basis"] = [{"uri": "https://a.example/p"}, {"uri": "https://a.example/q"}]
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"policy_basis"}


def test_source_is_a_reference_or_an_attachment() -> None:
    """Giving both a source reference and a source attachment is refused."""
    data = _sharing()
    data["source_attachment"] = {"url": "https://docs.example.org/form.pdf"}
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"source_attachment"}


def test_normal_form_orders_policies_and_classes() -> None:
    """Loading puts the policy document before the coded policy, and resource types first."""
    data = _sharing()
    data["policy_basis"] = [
        {
            "code": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "42CFRPart2",
            }
        },
        {"uri": "https://a.example/p"},
    ]
    data["provision"]["classes"] = [
        {"system": "http://loinc.org", "code": "11488-4"},
        {"system": RESOURCE_TYPES, "code": "Observation"},
    ]
    record = load_consent(data)
    assert record.policy_basis[0].uri == "https://a.example/p"
    assert record.provision.classes[0].system == RESOURCE_TYPES


def test_errors_do_not_echo_values() -> None:
    """Error messages name paths, never the rejected values (they may be patient data)."""
    data = _sharing()
    data["patient"] = {"reference": 12345678, "identifier": "secret-mrn-no-bar"}
    with pytest.raises(InputError) as err:
        load_consent(data)
    text = str(err.value) + " ".join(i.message for i in err.value.issues)
    assert "secret" not in text and "12345678" not in text


# --- revocations -------------------------------------------------------------------------------


def test_revocation_of_unknown_consent_is_refused() -> None:
    """A revocation naming a consent that is not known is an error at consent."""
    with pytest.raises(InputError) as err:
        load_revocation(_revocation(), known_consents={Identifier("urn:x", "other")})
    assert _paths(err) == {"consent"}


def test_revocation_loads_for_known_consent_and_dumps_back() -> None:
    """A revocation for a known consent loads, and dumps to the same JSON."""
    revocation = load_revocation(_revocation(), known_consents={SHARING_ID})
    assert revocation.consent == SHARING_ID
    assert dump_revocation(revocation) == _revocation()


def test_applying_a_revocation_appends_and_never_erases() -> None:
    """Revoking sets status revoked and appends one history entry; earlier entries stay."""
    record = load_consent(_sharing())
    revocation = load_revocation(_revocation(), known_consents={record.id})
    revoked = apply_revocation(record, revocation)
    assert revoked.status is ConsentStatus.REVOKED
    assert revoked.history[:-1] == record.history
    assert revoked.history[-1].status is ConsentStatus.REVOKED
    assert revoked.history[-1].at == revocation.at
    assert record.status is ConsentStatus.ACTIVE  # the original is untouched (frozen)


def test_revoking_twice_or_backdated_is_refused() -> None:
    """A revoked consent cannot be revoked again; a revocation before the last change is refused."""
    record = load_consent(_sharing())
    revocation = load_revocation(_revocation(), known_consents={record.id})
    revoked = apply_revocation(record, revocation)
    with pytest.raises(InputError) as err:
        apply_revocation(revoked, revocation)
    assert _paths(err) == {"consent"}
    early = ConsentRevocation(consent=record.id, at=datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(InputError) as err:
        apply_revocation(record, early)
    assert _paths(err) == {"at"}


def test_load_consent_records_applies_revocations_in_order() -> None:
    """A list of consents and revocations loads with each revocation applied to its consent."""
    records = load_consent_records([_sharing(), _revocation()])
    assert len(records) == 1
    assert records[0].status is ConsentStatus.REVOKED
    assert len(records[0].history) == 3


def test_load_consent_records_apply_a_revocation_listed_before_its_consent() -> None:
    """Order in the list does not matter: a revocation before its consent is still applied."""
    (record,) = load_consent_records([_revocation(), _sharing()])
    assert record.status is ConsentStatus.REVOKED
    assert len(record.history) == 3


def test_load_consent_records_reports_item_index() -> None:
    """Errors in a list carry the item's index; a revocation of a consent not in it is unknown."""
    with pytest.raises(InputError) as err:
        load_consent_records([_revocation()])
    assert _paths(err) == {"0.consent"}
    bad = _sharing()
    bad["status"] = "paused"
    with pytest.raises(InputError) as err:
        load_consent_records([_sharing(), copy.deepcopy(bad)])
    assert _paths(err) == {"1.status"}


def test_load_consent_records_refuses_duplicate_ids() -> None:
    """The same consent id twice in one list is refused at the second item's id."""
    with pytest.raises(InputError) as err:
        load_consent_records([_sharing(), _sharing()])
    assert _paths(err) == {"1.id"}


def test_revocation_against_known_consents() -> None:
    """A revocation may name a consent given in ``known`` (e.g. the store); it is returned revoked."""
    record = load_consent(_sharing())
    (revoked,) = load_consent_records([_revocation()], known={record.id: record})
    assert revoked.status is ConsentStatus.REVOKED


def test_ai_assisted_label_may_be_named_and_other_observation_values_may_not() -> None:
    """A provision may name AIAST (our label for AI-assisted content); other ObservationValue codes are refused."""
    system = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
    data = _sharing()
    data["provision"]["provisions"][1]["security_labels"] = [{"system": system, "code": "AIAST"}]
    record = load_consent(data)
    assert record.provision.provisions[1].security_labels[0].code == "AIAST"
    data["provision"]["provisions"][1]["security_labels"] = [{"system": system, "code": "NOPE"}]
    with pytest.raises(InputError) as err:
        load_consent(data)
    assert _paths(err) == {"provision.provisions.1.security_labels.0.code"}


@pytest.mark.parametrize(
    "system", ["urn:oid:2.16.840.1.113883.5.90", "http://hl7.org/fhir/v3/ParticipationType"]
)
def test_an_actor_role_given_by_its_oid_or_stu3_url_is_read_as_the_canonical_code(
    system: str,
) -> None:
    """v3-ParticipationType by its OID or STU3 URL is the same role, as the FHIR readers read it:
    a restriction posted so must deny the recipient it names. Found: kept as written, so the
    engine never matched it with the recipient (IRCP) and the sharing permit still applied
    (fail open)."""
    data = _sharing()
    data["provision"]["actors"][0]["role"]["system"] = system
    record = load_consent(data)
    role = record.provision.actors[0].role
    assert role.system == "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
    assert dump_consent(record)["provision"]["actors"][0]["role"]["system"] == role.system


def test_a_restriction_naming_the_recipient_role_by_oid_denies() -> None:
    """The sharing example permits the clinic's EHR; a later restriction denying it, its role
    given by v3-ParticipationType's OID, overrides the permit (deny-overrides)."""
    from fhir_alliance.consent import ConsentEngine, DecisionOutcome
    from fhir_alliance.consent.gate import disclosure_request

    sharing = _sharing()
    restriction = copy.deepcopy(sharing)
    restriction["id"] = "https://clinic.example.org/consents|c-restriction"
    restriction["consent_kind"] = "restriction"
    restriction["decision"] = "deny"
    restriction["provision"] = {"actors": copy.deepcopy(sharing["provision"]["actors"])}
    restriction["provision"]["actors"][0]["role"]["system"] = "urn:oid:2.16.840.1.113883.5.90"
    engine = ConsentEngine([load_consent(sharing), load_consent(restriction)])
    actor = sharing["provision"]["actors"][0]["reference"]["reference"]
    resource = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": sharing["patient"],
        "effectiveDateTime": "2025-05-20T15:00:00+00:00",
    }
    request = disclosure_request(
        resource,
        patient=sharing["patient"]["reference"],
        recipient=actor,
        purposes=["TREAT"],
        at=datetime(2025, 6, 1, tzinfo=UTC),
    )
    assert engine.decide(request).outcome is DecisionOutcome.DENY
