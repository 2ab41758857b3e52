"""Review (library, area a): Consents authored by other EHRs, R4 and R5, read by ``from_consent``.

Every valid shape must give either a faithful record or a ``MappingError`` naming the FHIR element;
never a record whose meaning is wider than the resource's (deny by default).
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_alliance.consent import DecisionOutcome
from fhir_alliance.errors import MappingError
from fhir_alliance.mapping.consent import from_consent
from tests.review_library.foreign import (
    FOREIGN_MODIFIER,
    IRCP,
    RECIPIENT,
    TREAT,
    TWO_CODING_IRCP,
    V3,
    decide,
    r4_consent,
    r5_consent,
)

# Permit for TREAT, except to the EHR organisation (its role coded the other EHR's way).
R4_DENY_EHR = r4_consent(
    {
        "type": "permit",
        "purpose": [TREAT],
        "provision": [
            {
                "type": "deny",
                "actor": [{"role": TWO_CODING_IRCP, "reference": {"reference": RECIPIENT}}],
            }
        ],
    }
)
# R5: base permit; the one provision is its exception (a deny for the EHR organisation).
R5_DENY_EHR = r5_consent(
    "permit", [{"actor": [{"role": TWO_CODING_IRCP, "reference": {"reference": RECIPIENT}}]}]
)


@pytest.mark.parametrize(
    ("resource", "element"),
    [
        (R4_DENY_EHR, "Consent.provision.provision[0].actor[0].role"),
        (R5_DENY_EHR, "Consent.provision[0].actor[0].role"),
    ],
    ids=["r4", "r5"],
)
def test_actor_role_with_two_codings_keeps_the_deny_for_that_actor(
    resource: dict[str, Any], element: str
) -> None:
    """A deny for an actor whose role carries a local coding before the v3 IRCP one is either read
    as a deny for that recipient or refused at the role; it is never lost (which permits)."""
    try:
        record = from_consent(resource)
    except MappingError as error:
        assert error.element.startswith(element), error.element
        return
    decision = decide([record])
    assert decision.outcome is not DecisionOutcome.PERMIT, decision.explain()


_ACTOR_WITH_FOREIGN_MODIFIER = {
    "modifierExtension": FOREIGN_MODIFIER,
    "role": IRCP,
    "reference": {"reference": RECIPIENT},
}


@pytest.mark.parametrize(
    ("resource", "element"),
    [
        (
            r4_consent({"type": "permit", "actor": [_ACTOR_WITH_FOREIGN_MODIFIER]}),
            "Consent.provision.actor[0]",
        ),
        (
            r4_consent(
                {
                    "type": "permit",
                    "provision": [
                        {
                            "type": "deny",
                            "data": [
                                {
                                    "modifierExtension": FOREIGN_MODIFIER,
                                    "meaning": "instance",
                                    "reference": {"reference": "Observation/other"},
                                }
                            ],
                        }
                    ],
                }
            ),
            "Consent.provision.provision[0].data[0]",
        ),
        (
            r4_consent(
                {"type": "permit"},
                verification=[
                    {
                        "modifierExtension": FOREIGN_MODIFIER,
                        "verified": True,
                        "verificationDate": "2025-05-01T00:00:00Z",
                        "extension": [
                            {
                                "url": "https://fhir-alliance.org/fhir/StructureDefinition/"
                                "consent-verification-method",
                                "valueCode": "written",
                            }
                        ],
                    }
                ],
            ),
            "Consent.verification[0]",
        ),
        (
            r5_consent(
                "deny",
                [{"purpose": [TREAT], "actor": [_ACTOR_WITH_FOREIGN_MODIFIER]}],
            ),
            "Consent.provision[0].actor[0]",
        ),
    ],
    ids=["r4-root-actor", "r4-nested-data", "r4-verification", "r5-actor"],
)
def test_unknown_modifier_extension_inside_a_provision_part_is_refused(
    resource: dict[str, Any], element: str
) -> None:
    """An unknown modifierExtension on a backbone element (actor, data, verification) changes what
    it means: the reader refuses it at that element, as it does on the resource and a provision."""
    with pytest.raises(MappingError) as caught:
        from_consent(resource)
    assert caught.value.element.startswith(element), caught.value.element


def test_root_permit_for_everyone_but_one_actor_is_not_read_as_a_permit_to_that_actor() -> None:
    """The consequence of the above: 'permit everyone except Organization/ehr' (a modifier on the
    actor) must not let the engine permit Organization/ehr."""
    resource = r4_consent({"type": "permit", "actor": [_ACTOR_WITH_FOREIGN_MODIFIER]})
    try:
        record = from_consent(resource)
    except MappingError:
        return
    decision = decide([record])
    assert decision.outcome is not DecisionOutcome.PERMIT, decision.explain()


def test_unknown_element_inside_an_actor_is_refused() -> None:
    """Unknown elements are refused everywhere else in a Consent; inside an actor too."""
    actor = {"role": IRCP, "reference": {"reference": RECIPIENT}, "excluded": True}
    with pytest.raises(MappingError) as caught:
        from_consent(r4_consent({"type": "permit", "actor": [actor]}))
    assert caught.value.element == "Consent.provision.actor[0].excluded"


@pytest.mark.parametrize(
    "resource",
    [
        r4_consent({"type": "permit"}, implicitRules="https://other-ehr.example/rules/v1"),
        r5_consent("permit", [], implicitRules="https://other-ehr.example/rules/v1"),
    ],
    ids=["r4", "r5"],
)
def test_implicit_rules_are_refused(resource: dict[str, Any]) -> None:
    """``implicitRules`` is a modifier element (rules that change the resource's meaning): a reader
    that does not know them must not apply the consent; it is dropped without a word today."""
    with pytest.raises(MappingError) as caught:
        from_consent(resource)
    assert caught.value.element == "Consent.implicitRules"


def test_optout_policy_rule_in_a_later_coding_disagrees_with_a_permit_root() -> None:
    """An OPTOUT policy rule that disagrees with a permit root is refused ('base decisions
    disagree'); the same rule given beside the other EHR's own coding must be refused too."""
    optout = {"system": f"{V3}/v3-ActCode", "code": "OPTOUT"}
    local = {"system": "https://other-ehr.example/policies", "code": "state-sharing-act"}
    alone = r4_consent({"type": "permit"}, policyRule={"coding": [optout]})
    with pytest.raises(MappingError):
        from_consent(alone)  # the documented behaviour, for comparison
    beside = r4_consent({"type": "permit"}, policyRule={"coding": [local, optout]})
    with pytest.raises(MappingError) as caught:
        from_consent(beside)
    assert caught.value.element.startswith("Consent.policyRule"), caught.value.element
