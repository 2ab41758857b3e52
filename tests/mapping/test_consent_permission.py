"""Treatment permissions ⇄ R5 Permission: round trip of what Permission carries, validity, misfits."""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.permission import Permission
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_alliance.errors import MappingError
from fhir_alliance.mapping.consent import (
    MAPPER,
    from_permission,
    permission_view,
    to_consent,
    to_permission,
)
from fhir_alliance.model.common import Coding
from fhir_alliance.model.consent import ConsentKind, ConsentRecord, ConsentStatus, Provision
from fhir_alliance.schemas.consent import load_consent
from tests.mapping.consent_strategies import any_codings, consent_records, purposes

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "consent" / "r5-permission"
REGENERATE = os.environ.get("FHIR_ALLIANCE_REGENERATE_GOLDEN") == "1"
TREATMENTS = ["treatment-declined", "treatment-accepted"]


@st.composite
def treatment_permissions(draw: st.DrawFn) -> ConsentRecord:
    record = draw(consent_records())
    return replace(
        record,
        kind=ConsentKind.TREATMENT,
        intervention=draw(any_codings),
        provision=Provision(
            type=record.decision, purposes=tuple(draw(st.lists(purposes, max_size=2)))
        ),
    )


def _example(name: str) -> ConsentRecord:
    return load_consent(json.loads((ROOT / "examples" / "consent" / f"{name}.json").read_text()))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(treatment_permissions())
def test_round_trip_of_what_permission_carries(record: ConsentRecord) -> None:
    """Domain → Permission → domain gives the record's permission view, and it is valid R5."""
    resource = to_permission(record)
    Permission.model_validate(copy.deepcopy(resource))
    assert from_permission(resource) == permission_view(record)
    assert to_permission(permission_view(record)) == resource


@pytest.mark.parametrize("name", TREATMENTS)
def test_golden_permissions(name: str) -> None:
    """Each treatment example's Permission equals its golden file (FHIR_ALLIANCE_REGENERATE_GOLDEN=1)."""
    resource = to_permission(_example(name))
    golden = GOLDEN / f"{name}.json"
    if REGENERATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(json.dumps(resource, indent=2, ensure_ascii=False) + "\n")
        pytest.fail(f"regenerated {golden.relative_to(ROOT)}; review, rerun without the flag")
    assert json.loads(golden.read_text()) == resource


def test_permission_points_at_its_consent_and_refusal_is_deny() -> None:
    """The declined intervention is a deny rule whose evidence names the Consent by id and identifier."""
    record = _example("treatment-declined")
    resource = to_permission(record)
    consent = to_consent(record)
    assert resource["combining"] == "deny-overrides"
    assert resource["rule"][0]["type"] == "deny"
    assert resource["rule"][0]["activity"][0]["action"][0]["coding"][0]["code"] == "304891004"
    evidence = resource["justification"]["evidence"][0]
    assert evidence["reference"] == f"Consent/{consent['id']}"
    assert evidence["identifier"] == consent["identifier"][0]
    assert resource["id"] != consent["id"]


def test_revoked_permission_is_rejected_with_precise_state() -> None:
    """Permission has no inactive: a revoked treatment permission is rejected plus our state."""
    record = replace(_example("treatment-declined"), status=ConsentStatus.REVOKED, history=())
    resource = to_permission(record)
    assert resource["status"] == "rejected"
    assert from_permission(resource).status is ConsentStatus.REVOKED


def test_registry_reads_permissions() -> None:
    """MAPPER.from_fhir reads a Permission back into a treatment record."""
    record = _example("treatment-accepted")
    assert MAPPER.from_fhir([to_permission(record)]) == [permission_view(record)]


def test_what_permission_cannot_carry_is_refused() -> None:
    """Non-treatment kinds, nested exceptions and conditions other than purpose raise MappingError."""
    with pytest.raises(MappingError) as err:
        to_permission(_example("sharing"))
    assert err.value.element == "kind"
    record = replace(_example("sharing"), kind=ConsentKind.TREATMENT)
    record = replace(record, intervention=_example("treatment-declined").intervention)
    with pytest.raises(MappingError) as err:
        to_permission(record)
    assert err.value.element == "provision.provisions"
    record = replace(record, provision=replace(record.provision, provisions=()))
    with pytest.raises(MappingError) as err:
        to_permission(record)
    assert err.value.element == "provision.actors"
    disclose = Coding(system="http://terminology.hl7.org/CodeSystem/consentaction", code="disclose")
    with pytest.raises(MappingError) as err:
        to_permission(replace(_example("treatment-declined"), intervention=disclose))
    assert err.value.element == "intervention"


MISFITS: list[tuple[str, Any, str]] = [
    ("combining", "permit-overrides", "Permission.combining"),
    ("status", "paused", "Permission.status"),
    ("rule", [], "Permission.rule"),
    ("justification", {"evidence": []}, "Permission.justification.evidence"),
    ("date", [], "Permission.date"),
    ("modifierExtension", [{"url": "urn:x", "valueBoolean": True}], "Permission.modifierExtension"),
    ("grantee", [], "Permission.grantee"),
]


@pytest.mark.parametrize(("key", "value", "element"), MISFITS, ids=[m[0] for m in MISFITS])
def test_misfit_permissions_name_the_element(key: str, value: Any, element: str) -> None:
    """A Permission that does not fit raises MappingError naming the element."""
    resource = to_permission(_example("treatment-accepted"))
    resource.pop("extension")  # a foreign Permission has no state extension of ours
    from_permission(copy.deepcopy(resource))
    resource[key] = value
    with pytest.raises(MappingError) as err:
        from_permission(resource)
    assert err.value.element == element


_FOREIGN_MODIFIER = [{"url": "https://other-ehr.example/all-except", "valueBoolean": True}]
_LOCAL = "https://other-ehr.example/fhir/CodeSystem/local"
_CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
NESTED_MISFITS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "implicitRules",
        lambda r: r.update(implicitRules="https://other-ehr.example/rules"),
        "Permission.implicitRules",
    ),
    (
        "activity-modifier",
        lambda r: r["rule"][0]["activity"][0].update(modifierExtension=_FOREIGN_MODIFIER),
        "Permission.rule[0].activity[0].modifierExtension[0]",
    ),
    (
        "rule-modifier",
        lambda r: r["rule"][0].update(modifierExtension=_FOREIGN_MODIFIER),
        "Permission.rule[0].modifierExtension[0]",
    ),
    (
        "data-security",  # narrows the data the rule is about: ignoring it widens a permit
        lambda r: r["rule"][0]["data"][0].update(security=[{"system": "urn:x", "code": "R"}]),
        "Permission.rule[0].data[0].security",
    ),
    (
        "data-resource-unknown",
        lambda r: r["rule"][0]["data"][0]["resource"][0].update(other=True),
        "Permission.rule[0].data[0].resource[0].other",
    ),
    (
        "justification-modifier",
        lambda r: r["justification"].update(modifierExtension=_FOREIGN_MODIFIER),
        "Permission.justification.modifierExtension[0]",
    ),
    (
        "intervention-codings",
        lambda r: r["rule"][0]["activity"][0]["action"][0]["coding"].append(
            {"system": _LOCAL, "code": "other"}
        ),
        "Permission.rule[0].activity[0].action[0].coding",
    ),
    (
        "data-access-action",  # a Permission about data access, not a treatment
        lambda r: r["rule"][0]["activity"][0].update(
            action=[{"coding": [{"system": _CONSENT_ACTION, "code": "disclose"}]}]
        ),
        "Permission.rule[0].activity[0].action[0]",
    ),
    (
        "data-access-action-spelt-otherwise",
        lambda r: r["rule"][0]["activity"][0].update(
            action=[
                {
                    "coding": [
                        {
                            "system": f"{_CONSENT_ACTION}/".replace("http:", "https:"),
                            "code": "access",
                        }
                    ]
                }
            ]
        ),
        "Permission.rule[0].activity[0].action[0]",
    ),
]


@pytest.mark.parametrize(
    ("change", "element"), [m[1:] for m in NESTED_MISFITS], ids=[m[0] for m in NESTED_MISFITS]
)
def test_misfits_inside_a_permission_name_the_element(
    change: Callable[[dict[str, Any]], None], element: str
) -> None:
    """implicitRules, modifier extensions and unknown elements inside the rule, its data and
    activity, an intervention coded two ways and an action that is a consentaction code (who may
    do what with data, not a treatment) are refused, naming the element."""
    resource = to_permission(_example("treatment-accepted"))
    resource.pop("extension")
    from_permission(copy.deepcopy(resource))
    change(resource)
    with pytest.raises(MappingError) as err:
        from_permission(resource)
    assert err.value.element == element


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(treatment_permissions(), st.data())
def test_mutated_permissions_raise_mapping_error_only(
    record: ConsentRecord, data: st.DataObject
) -> None:
    """A Permission with one element replaced by junk maps or raises MappingError, never crashes."""
    resource = to_permission(record)
    slots: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for key, value in items:
            slots.append((node, key))
            walk(value)

    walk(resource)
    container, key = data.draw(st.sampled_from(slots))
    container[key] = data.draw(_json)
    with contextlib.suppress(MappingError):
        from_permission(resource)
