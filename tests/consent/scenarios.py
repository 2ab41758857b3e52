"""The decision scenario table: each row is consents + request → outcome, deciding paths, obligations.

Rows are cited by name in docs/consent-decisions.md (``test_scenario[<name>]``). ``basis`` entries are
``<consent value>@<provision path>``; ``obligations`` are ``(mode, codes)`` with mode ``redact`` or
``except`` and codes sorted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fhir_alliance.consent.decision import (
    CombiningRule,
    DecisionOutcome,
    DecisionRequest,
    RequestedResource,
)
from fhir_alliance.consent.directory import ActorDirectory
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import ConsentRecord, ConsentStatus, StatusChange
from tests.consent.builders import (
    MRN,
    NPI,
    ORG_IDS,
    OTHER_PATIENT,
    PATIENT_BY_ID,
    PRCP,
    act,
    actor,
    consent,
    data,
    klass,
    label,
    loinc,
    period,
    pou,
    prov,
    request,
    resource,
    t,
)

PERMIT, DENY, NONE = DecisionOutcome.PERMIT, DecisionOutcome.DENY, DecisionOutcome.NO_CONSENT
RECENT = CombiningRule.MOST_RECENT_WINS

DR_A = Ref(reference="Practitioner/dr-a")
DR_A_ID = Ref(identifier=Identifier(NPI, "1111111111"))
DR_B = Ref(reference="Practitioner/dr-b")
#: A practitioner named by identifier only, in no directory.
NPI_2222 = Ref(identifier=Identifier(NPI, "2222222222"))
ORG = Ref(reference="Organization/clinic")
ORG_ID = Ref(identifier=Identifier(ORG_IDS, "urn:oid:2.16.840.1.113883.20.5"))
AI = Ref(reference="Device/ai-scribe")
WAI_SR = loinc("89204-2")
PHQ9 = loinc("44261-6")
SD = "http://hl7.org/fhir/StructureDefinition"
PANEL_PROFILE = "https://fhir-alliance.org/fhir/StructureDefinition/alliance-panel"

DIRECTORY = ActorDirectory(
    [
        ("Practitioner/dr-a", [DR_A_ID.identifier]),  # type: ignore[list-item]
        ("Organization/clinic", [ORG_ID.identifier]),  # type: ignore[list-item]
        ("Patient/p1", [Identifier(MRN, "p-001")]),
    ]
)
EMPTY_DIRECTORY = ActorDirectory()

#: Every root below permits these purposes unless a row says otherwise.
TREAT_ETC = [pou("TREAT"), pou("HOPERAT"), pou("HRESCH")]


@dataclass
class Scenario:
    name: str
    consents: list[ConsentRecord]
    request: DecisionRequest
    outcome: DecisionOutcome
    basis: list[str] = field(default_factory=list)
    obligations: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    combining: CombiningRule = CombiningRule.DENY_OVERRIDES
    directory: ActorDirectory = DIRECTORY
    note: str | None = None  # a fragment some note of the decision must contain


def _revoked(revoked_at: str) -> tuple[StatusChange, ...]:
    return (
        StatusChange(status=ConsentStatus.ACTIVE, at=t("2025-01-01")),
        StatusChange(status=ConsentStatus.REVOKED, at=t(revoked_at)),
    )


def share_with(*who: Ref, purposes: list | None = None, **root: object) -> dict:  # type: ignore[type-arg]
    """Root conditions: these recipients, these purposes (default TREAT_ETC)."""
    return {"actors": [actor(w) for w in who], "purposes": purposes or TREAT_ETC, **root}


OBS = resource("Observation")
PSY_OBS = resource("Observation", labels=("R", "PSY"))
NOTE = resource("DocumentReference", labels=("R", "PSYTHPN"))
#: An Observation known only by its business identifier (no id): a consent naming it by reference
#: cannot be compared with it.
OBS_BY_IDENTIFIER = RequestedResource(
    type="Observation",
    reference=Ref(
        identifier=Identifier("https://clinic.example/obs-ids", "o-1"), type="Observation"
    ),
)

SCENARIOS: list[Scenario] = [
    # --- the basics ---
    Scenario("no-consents", [], request(DR_A, res=OBS), NONE),
    Scenario(
        "simple-permit",
        [consent("c1", "permit", **share_with(DR_A))],
        request(DR_A, res=OBS),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "simple-deny",
        [consent("c1", "deny", **share_with(DR_A))],
        request(DR_A, res=OBS),
        DENY,
        ["c1@root"],
    ),
    Scenario(
        "actor-mismatch",
        [consent("c1", "permit", **share_with(DR_A))],
        request(DR_B, res=OBS),
        NONE,
    ),
    Scenario(
        "purpose-mismatch",
        [consent("c1", "permit", **share_with(DR_A, purposes=[pou("TREAT")]))],
        request(DR_A, purpose="HPAYMT", res=OBS),
        NONE,
    ),
    Scenario(
        "any-of-several-purposes",
        [consent("c1", "permit", **share_with(DR_A, purposes=[pou("HPAYMT")]))],
        DecisionRequest(
            patient=(PATIENT_BY_ID, Ref(reference="Patient/p1")),
            actors=request(DR_A).actors,
            at=t("2025-06-01"),
            purposes=(pou("TREAT"), pou("HPAYMT")),
            action=act("disclose"),
            resource=OBS,
        ),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "action-mismatch",
        [consent("c1", "permit", actions=[act("access")], **share_with(DR_A))],
        request(DR_A, action="disclose", res=OBS),
        NONE,
    ),
    Scenario(
        "action-missing-from-request",
        [consent("c1", "permit", actions=[act("disclose")], **share_with(DR_A))],
        request(DR_A, action=None, res=OBS),
        NONE,
    ),
    Scenario(
        "role-mismatch",
        [consent("c1", "permit", actors=[actor(DR_A, PRCP)], purposes=TREAT_ETC)],
        request(DR_A, res=OBS),
        NONE,
    ),
    Scenario(
        "role-match",
        [consent("c1", "permit", actors=[actor(DR_A, PRCP)], purposes=TREAT_ETC)],
        request(DR_A, res=OBS, role=PRCP),
        PERMIT,
        ["c1@root"],
    ),
    # --- lifecycle ---
    Scenario(
        "revoked",
        [consent("c1", "permit", status="revoked", **share_with(DR_A))],
        request(DR_A, res=OBS),
        NONE,
    ),
    Scenario(
        "revoked-after-request-time",
        [
            consent(
                "c1", "permit", status="revoked", history=_revoked("2025-07-01"), **share_with(DR_A)
            )
        ],
        request(DR_A, at="2025-06-01", res=OBS),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "revoked-before-request-time",
        [
            consent(
                "c1", "permit", status="revoked", history=_revoked("2025-05-01"), **share_with(DR_A)
            )
        ],
        request(DR_A, at="2025-06-01", res=OBS),
        NONE,
    ),
    Scenario(
        "entered-in-error",
        [consent("c1", "deny", status="entered-in-error", **share_with(DR_A))],
        request(DR_A, res=OBS),
        NONE,
    ),
    Scenario(
        "draft",
        [consent("c1", "permit", status="draft", **share_with(DR_A))],
        request(DR_A, res=OBS),
        NONE,
    ),
    Scenario(
        "expired-period",
        [consent("c1", "permit", period=period("2024-01-01", "2025-03-01"), **share_with(DR_A))],
        request(DR_A, at="2025-06-01", res=OBS),
        NONE,
    ),
    Scenario(
        "period-end-is-exclusive",
        [consent("c1", "permit", period=period("2024-01-01", "2025-06-01"), **share_with(DR_A))],
        request(DR_A, at="2025-06-01", res=OBS),
        NONE,
    ),
    Scenario(
        "period-not-started",
        [consent("c1", "permit", period=period("2025-07-01"), **share_with(DR_A))],
        request(DR_A, at="2025-06-01", res=OBS),
        NONE,
    ),
    Scenario(
        "root-provision-period-over",
        [consent("c1", "permit", **share_with(DR_A, provision_period=period(end="2025-02-01")))],
        request(DR_A, at="2025-06-01", res=OBS),
        NONE,
    ),
    # --- whose consent ---
    Scenario(
        "other-patients-consent",
        [consent("c1", "permit", patient=OTHER_PATIENT, **share_with(DR_A))],
        request(DR_A, res=OBS),
        NONE,
    ),
    Scenario(
        "patient-by-identifier-via-directory",
        [consent("c1", "permit", **share_with(DR_A))],
        request(DR_A, patient=(PATIENT_BY_ID,), res=OBS),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "patient-by-identifier-unresolvable",
        [consent("c1", "permit", **share_with(DR_A))],
        request(DR_A, patient=(PATIENT_BY_ID,), res=OBS),
        NONE,
        directory=EMPTY_DIRECTORY,
    ),
    # --- actors by reference and identifier ---
    Scenario(
        "actor-reference-vs-identifier",
        [consent("c1", "permit", **share_with(DR_A))],
        request(DR_A_ID, res=OBS),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "actor-identifier-vs-reference",
        [consent("c1", "permit", **share_with(ORG_ID))],
        request(ORG, res=OBS),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "actor-unresolvable",
        [consent("c1", "permit", **share_with(DR_A))],
        request(DR_A_ID, res=OBS),
        NONE,
        directory=EMPTY_DIRECTORY,
        note="not in the actor directory",
    ),
    Scenario(
        "actor-unresolvable-deny-exception",
        [consent("c1", "permit", prov("deny", actors=[actor(DR_B)]), purposes=TREAT_ETC)],
        request(Ref(identifier=Identifier(NPI, "2222222222")), res=OBS),
        DENY,
        ["c1@0"],
        note="provision 0: actor Practitioner/dr-b could not be resolved",
    ),
    Scenario(
        "several-request-actors-one-denied",
        [consent("c1", "permit", prov("deny", actors=[actor(DR_B)]), **share_with(ORG))],
        request(ORG, DR_B, res=OBS),
        DENY,
        ["c1@0"],
    ),
    # --- nesting ---
    Scenario(
        "nested-deny-label",
        [consent("c1", "permit", prov("deny", labels=[label("PSY")]), **share_with(DR_A))],
        request(DR_A, res=PSY_OBS),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "nested-deny-label-not-carried",
        [consent("c1", "permit", prov("deny", labels=[label("PSY")]), **share_with(DR_A))],
        request(DR_A, res=resource("Observation", labels=("R", "BH"))),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "two-levels-permit-back",
        [
            consent(
                "c1",
                "permit",
                prov(
                    "deny",
                    prov("permit", actors=[actor(DR_A)], purposes=[pou("TREAT")]),
                    labels=[label("PSY")],
                ),
                **share_with(DR_A, DR_B),
            )
        ],
        request(DR_A, res=PSY_OBS),
        PERMIT,
        ["c1@0.0"],
    ),
    Scenario(
        "two-levels-other-actor",
        [
            consent(
                "c1",
                "permit",
                prov("deny", prov("permit", actors=[actor(DR_A)]), labels=[label("PSY")]),
                **share_with(DR_A, DR_B),
            )
        ],
        request(DR_B, res=PSY_OBS),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "three-levels-deepest-decides",
        [
            consent(
                "c1",
                "permit",
                prov(
                    "deny",
                    prov("permit", prov("deny", purposes=[pou("HRESCH")]), actors=[actor(DR_A)]),
                    labels=[label("R")],
                ),
                **share_with(DR_A, DR_B),
            )
        ],
        request(DR_A, purpose="HRESCH", res=PSY_OBS),
        DENY,
        ["c1@0.0.0"],
    ),
    Scenario(
        "three-levels-middle-decides",
        [
            consent(
                "c1",
                "permit",
                prov(
                    "deny",
                    prov("permit", prov("deny", purposes=[pou("HRESCH")]), actors=[actor(DR_A)]),
                    labels=[label("R")],
                ),
                **share_with(DR_A, DR_B),
            )
        ],
        request(DR_A, purpose="TREAT", res=PSY_OBS),
        PERMIT,
        ["c1@0.0"],
    ),
    Scenario(
        "untyped-nested-negates-parent",
        [consent("c1", "permit", prov(None, actors=[actor(DR_B)]), purposes=TREAT_ETC)],
        request(DR_B, res=OBS),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "siblings-deny-overrides",
        [
            consent(
                "c1",
                "deny",
                prov("permit", purposes=[pou("TREAT")]),
                prov("deny", labels=[label("PSY")]),
                prov("permit", actors=[actor(DR_A)]),
                **share_with(DR_A),
            )
        ],
        request(DR_A, res=PSY_OBS),
        DENY,
        ["c1@1"],
    ),
    Scenario(
        "nested-deny-under-deny-stays-deny",
        [consent("c1", "deny", prov("deny", labels=[label("R")]), **share_with(DR_A))],
        request(DR_A, res=PSY_OBS),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "nested-period",
        [
            consent(
                "c1",
                "permit",
                prov("deny", period=period("2025-05-01", "2025-07-01")),
                **share_with(DR_A),
            )
        ],
        request(DR_A, at="2025-06-01", res=OBS),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "nested-period-over",
        [
            consent(
                "c1",
                "permit",
                prov("deny", period=period("2025-05-01", "2025-07-01")),
                **share_with(DR_A),
            )
        ],
        request(DR_A, at="2025-08-01", res=OBS),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "nested-action",
        [
            consent(
                "c1",
                "permit",
                prov("deny", actions=[act("disclose")]),
                actors=[actor(AI)],
                actions=[act("collect"), act("use"), act("disclose")],
            )
        ],
        request(AI, purpose=None, action="disclose", res=OBS),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "nested-actor-role",
        [consent("c1", "permit", prov("deny", actors=[actor(DR_B, PRCP)]), purposes=TREAT_ETC)],
        request(DR_B, res=OBS),
        PERMIT,
        ["c1@root"],
    ),
    # --- data: period, class, code, references ---
    Scenario(
        "data-period-inside",
        [
            consent(
                "c1",
                "permit",
                prov("deny", data_period=period("2020-01-01", "2023-01-01")),
                **share_with(DR_A),
            )
        ],
        request(DR_A, res=resource("Observation", date="2021-05-01")),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "data-period-outside",
        [
            consent(
                "c1",
                "permit",
                prov("deny", data_period=period("2020-01-01", "2023-01-01")),
                **share_with(DR_A),
            )
        ],
        request(DR_A, res=resource("Observation", date="2024-05-01")),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "data-period-end-exclusive",
        [
            consent(
                "c1",
                "permit",
                prov("deny", data_period=period("2020-01-01", "2023-01-01")),
                **share_with(DR_A),
            )
        ],
        request(DR_A, res=resource("Observation", date="2023-01-01")),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "data-period-undated-resource-deny",
        [
            consent(
                "c1",
                "permit",
                prov("deny", data_period=period("2020-01-01", "2023-01-01")),
                **share_with(DR_A),
            )
        ],
        request(DR_A, res=resource("Observation")),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "root-data-period-limits-permit",
        [consent("c1", "permit", **share_with(DR_A, data_period=period("2024-01-01")))],
        request(DR_A, res=resource("Observation", date="2023-05-01")),
        NONE,
    ),
    Scenario(
        "class-resource-type",
        [consent("c1", "permit", **share_with(DR_A, classes=[klass("Observation")]))],
        request(DR_A, res=resource("QuestionnaireResponse")),
        NONE,
    ),
    Scenario(
        "class-profile",
        [consent("c1", "permit", **share_with(DR_A, classes=[Coding(SD, PANEL_PROFILE)]))],
        request(DR_A, res=resource("Observation", profiles=(PANEL_PROFILE,))),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "code-deny",
        [consent("c1", "permit", prov("deny", codes=[PHQ9]), **share_with(DR_A))],
        request(DR_A, res=resource("Observation", codes=(PHQ9,))),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "code-permit-only-wai-sr",
        [consent("c1", "permit", **share_with(DR_A, codes=[WAI_SR]))],
        request(DR_A, res=resource("Observation", codes=(PHQ9,))),
        NONE,
    ),
    Scenario(
        "data-instance",
        [
            consent(
                "c1",
                "permit",
                prov("deny", data=[data("instance", "Observation/o1")]),
                **share_with(DR_A),
            )
        ],
        request(DR_A, res=resource("Observation", reference="Observation/o1")),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "data-instance-other",
        [
            consent(
                "c1",
                "permit",
                prov("deny", data=[data("instance", "Observation/o1")]),
                **share_with(DR_A),
            )
        ],
        request(DR_A, res=resource("Observation", reference="Observation/o2")),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "data-related",
        [
            consent(
                "c1",
                "permit",
                prov("deny", data=[data("related", "QuestionnaireResponse/q1")]),
                **share_with(DR_A),
            )
        ],
        request(
            DR_A,
            res=resource(
                "Observation",
                reference="Observation/o5",
                referenced_by=("QuestionnaireResponse/q1",),
            ),
        ),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "data-related-wrong-direction",
        [
            consent(
                "c1",
                "permit",
                prov("deny", data=[data("related", "QuestionnaireResponse/q1")]),
                **share_with(DR_A),
            )
        ],
        request(
            DR_A,
            res=resource(
                "Observation", reference="Observation/o5", refers_to=("QuestionnaireResponse/q1",)
            ),
        ),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "data-dependents",
        [
            consent(
                "c1",
                "permit",
                prov("deny", data=[data("dependents", "Observation/panel")]),
                **share_with(DR_A),
            )
        ],
        request(
            DR_A,
            res=resource(
                "Observation", reference="Observation/item", refers_to=("Observation/panel",)
            ),
        ),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "data-authoredby",
        [
            consent(
                "c1",
                "permit",
                prov("deny", data=[data("authoredby", "Device/ai-scribe")]),
                **share_with(DR_A),
            )
        ],
        request(
            DR_A, res=resource("DocumentReference", reference="DocumentReference/d1", authors=(AI,))
        ),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "category-filter",
        [consent("c1", "permit", categories=(loinc("64292-6"),), **share_with(DR_A))],
        request(DR_A, res=OBS, categories=(loinc("59284-0"),)),
        NONE,
    ),
    # --- PSYTHPN ---
    Scenario(
        "psythpn-needs-explicit-permit",
        [consent("c1", "permit", **share_with(DR_A))],
        request(DR_A, res=NOTE),
        DENY,
        note="base decision: permits, but does not name PSYTHPN",
    ),
    Scenario(
        "psythpn-permitted-by-nested-exception",
        [
            consent(
                "c1",
                "permit",
                prov("deny", prov("permit", actors=[actor(DR_A)]), labels=[label("PSYTHPN")]),
                **share_with(DR_A, DR_B),
            )
        ],
        request(DR_A, res=NOTE),
        PERMIT,
        ["c1@0.0"],
    ),
    Scenario(
        "psythpn-permitted-by-root-label",
        [consent("c1", "permit", **share_with(DR_A, security_labels=[label("PSYTHPN")]))],
        request(DR_A, res=NOTE),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "psythpn-general-permit-is-silent",
        [
            consent("c1", "permit", date="2025-05-01", **share_with(DR_A)),
            consent(
                "c2",
                "permit",
                date="2025-01-01",
                **share_with(DR_A, security_labels=[label("PSYTHPN")]),
            ),
        ],
        request(DR_A, res=NOTE),
        PERMIT,
        ["c2@root"],
        combining=RECENT,
    ),
    # --- several consents ---
    Scenario(
        "deny-overrides-newer-permit",
        [
            consent("c1", "deny", date="2025-01-01", **share_with(DR_A)),
            consent("c2", "permit", date="2025-03-01", **share_with(DR_A)),
        ],
        request(DR_A, res=OBS),
        DENY,
        ["c1@root"],
    ),
    Scenario(
        "most-recent-newer-permit",
        [
            consent("c1", "deny", date="2025-01-01", **share_with(DR_A)),
            consent("c2", "permit", date="2025-03-01", **share_with(DR_A)),
        ],
        request(DR_A, res=OBS),
        PERMIT,
        ["c2@root"],
        combining=RECENT,
    ),
    Scenario(
        "most-recent-newer-deny",
        [
            consent("c1", "permit", date="2025-03-01", **share_with(DR_A)),
            consent("c2", "deny", date="2025-04-01", **share_with(DR_A)),
        ],
        request(DR_A, res=OBS),
        DENY,
        ["c2@root"],
        combining=RECENT,
    ),
    Scenario(
        "most-recent-tie-deny-first",
        [
            consent("c1", "permit", date="2025-03-01", **share_with(DR_A)),
            consent("c2", "deny", date="2025-03-01", **share_with(DR_A)),
        ],
        request(DR_A, res=OBS),
        DENY,
        ["c2@root"],
        combining=RECENT,
    ),
    Scenario(
        "most-recent-tie-lower-identifier",
        [
            consent("c9", "permit", date="2025-03-01", **share_with(DR_A)),
            consent("c2", "permit", date="2025-03-01", **share_with(DR_A)),
        ],
        request(DR_A, res=OBS),
        PERMIT,
        ["c2@root"],
        combining=RECENT,
    ),
    Scenario(
        "most-recent-ignores-inapplicable",
        [
            consent("c1", "permit", date="2025-01-01", **share_with(DR_A)),
            consent("c2", "deny", date="2025-04-01", **share_with(DR_B)),
        ],
        request(DR_A, res=OBS),
        PERMIT,
        ["c1@root"],
        combining=RECENT,
    ),
    # --- the patient's data in general (no resource): obligations ---
    Scenario(
        "general-permit-redacts-denied-label",
        [consent("c1", "permit", prov("deny", labels=[label("PSY")]), **share_with(DR_A))],
        request(DR_A),
        PERMIT,
        ["c1@root"],
        [("redact", ("PSY",)), ("redact", ("PSYTHPN", "V"))],
    ),
    Scenario(
        "general-deny-with-permitted-label",
        [consent("c1", "deny", prov("permit", labels=[label("BH")]), **share_with(DR_A))],
        request(DR_A),
        PERMIT,
        ["c1@0"],
        [("except", ("BH",)), ("redact", ("PSYTHPN", "V"))],
    ),
    Scenario(
        "general-psythpn-permitted-for-named-actor",
        [
            consent(
                "c1",
                "permit",
                prov("deny", prov("permit", actors=[actor(DR_A)]), labels=[label("PSYTHPN")]),
                **share_with(DR_A, DR_B),
            )
        ],
        request(DR_A),
        PERMIT,
        ["c1@root"],
        [("redact", ("V",))],
    ),
    Scenario(
        "general-psythpn-denied-for-other-actor",
        [
            consent(
                "c1",
                "permit",
                prov("deny", prov("permit", actors=[actor(DR_A)]), labels=[label("PSYTHPN")]),
                **share_with(DR_A, DR_B),
            )
        ],
        request(DR_B),
        PERMIT,
        ["c1@root"],
        [("redact", ("PSYTHPN",)), ("redact", ("V",))],
    ),
    Scenario(
        "general-deny",
        [consent("c1", "deny", **share_with(DR_A))],
        request(DR_A),
        DENY,
        ["c1@root"],
    ),
    Scenario(
        "general-nested-deny-under-deny",
        [consent("c1", "deny", prov("deny", labels=[label("R")]), **share_with(DR_A))],
        request(DR_A),
        DENY,
        ["c1@root"],
    ),
    Scenario(
        "general-deny-overrides-across-consents",
        [
            consent("c1", "permit", date="2025-03-01", **share_with(DR_A)),
            consent("c2", "deny", date="2025-01-01", **share_with(DR_A)),
        ],
        request(DR_A),
        DENY,
        ["c2@root"],
    ),
    Scenario(
        "general-most-recent-permit",
        [
            consent(
                "c1",
                "permit",
                prov("deny", labels=[label("SUD")]),
                date="2025-03-01",
                **share_with(DR_A),
            ),
            consent("c2", "deny", date="2025-01-01", **share_with(DR_A)),
        ],
        request(DR_A),
        PERMIT,
        ["c1@root"],
        [("redact", ("PSYTHPN", "V")), ("redact", ("SUD",))],
        combining=RECENT,
    ),
    Scenario(
        "general-scoped-deny-consent-with-permit-consent",
        [
            consent("c1", "permit", date="2025-03-01", **share_with(DR_A)),
            consent(
                "c2", "deny", date="2025-01-01", **share_with(DR_A, security_labels=[label("HIV")])
            ),
        ],
        request(DR_A),
        PERMIT,
        ["c1@root"],
        [("redact", ("HIV",)), ("redact", ("PSYTHPN", "V"))],
    ),
    Scenario(
        "general-class-scoped-deny-redacts",
        [consent("c1", "permit", prov("deny", classes=[klass("Observation")]), **share_with(DR_A))],
        request(DR_A),
        PERMIT,
        ["c1@root"],
        [("redact", ("Observation",)), ("redact", ("PSYTHPN", "V"))],
    ),
    Scenario(
        "general-class-narrows-to-requested-content",
        [consent("c1", "permit", prov("deny", classes=[klass("Observation")]), **share_with(DR_A))],
        request(DR_A, classes=(klass("DocumentReference"),)),
        PERMIT,
        ["c1@root"],
        [("redact", ("PSYTHPN", "V"))],
    ),
    Scenario(
        "general-class-root-for-other-content",
        [consent("c1", "permit", **share_with(DR_A, classes=[klass("Observation")]))],
        request(DR_A, classes=(klass("DocumentReference"),)),
        NONE,
    ),
    Scenario(
        "general-class-root-for-requested-content",
        [consent("c1", "permit", **share_with(DR_A, classes=[klass("Observation")]))],
        request(DR_A, classes=(klass("Observation"),)),
        PERMIT,
        ["c1@root"],
        [("except", ("Observation",)), ("redact", ("PSYTHPN", "V"))],
    ),
    Scenario(
        "general-two-permitted-periods-keep-one",
        [
            consent(
                "c1",
                "deny",
                prov("permit", data_period=period("2020-01-01", "2021-01-01")),
                prov("permit", data_period=period("2024-01-01", "2025-01-01")),
                **share_with(DR_A),
            )
        ],
        request(DR_A),
        PERMIT,
        ["c1@0"],
        [("except", ()), ("redact", ("PSYTHPN", "V"))],
        note="1 permit(s) by another data period left out",
    ),
    Scenario(
        "general-no-consent",
        [consent("c1", "permit", **share_with(DR_A))],
        request(DR_B),
        NONE,
    ),
    # --- never fail open: unresolvable actors, unknown codes, redact-everything ---
    Scenario(
        "actor-unresolvable-deep-deny",
        [
            consent(
                "c1",
                "permit",
                prov("permit", prov("deny", actors=[actor(DR_B)]), purposes=[pou("TREAT")]),
                **share_with(ORG),
            )
        ],
        request(ORG, NPI_2222, res=OBS),
        DENY,
        ["c1@0.0"],
        note="provision 0.0: actor Practitioner/dr-b could not be resolved",
    ),
    Scenario(
        "actor-unresolvable-never-permits",
        [consent("c1", "deny", prov("permit", actors=[actor(DR_B)]), **share_with(ORG))],
        request(ORG, NPI_2222, res=OBS),
        DENY,
        ["c1@root"],
    ),
    Scenario(
        "actor-unresolvable-deny-root",
        [consent("c1", "deny", **share_with(DR_B))],
        request(NPI_2222, res=OBS),
        DENY,
        ["c1@root"],
        note="base decision: actor Practitioner/dr-b could not be resolved",
    ),
    Scenario(
        "actor-unresolvable-general-deny",
        [consent("c1", "permit", prov("deny", actors=[actor(DR_B)]), **share_with(ORG))],
        request(ORG, NPI_2222),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "actor-by-identifier-unresolvable-request-reference",
        [consent("c1", "permit", prov("deny", actors=[actor(NPI_2222)]), **share_with(ORG))],
        request(ORG, Ref(reference="Practitioner/unknown"), res=OBS),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "actor-unresolvable-other-resource-type-is-another-party",
        [
            consent(
                "c1",
                "permit",
                prov(
                    "deny", actors=[actor(Ref(identifier=NPI_2222.identifier, type="Practitioner"))]
                ),
                **share_with(Ref(reference="Organization/ehr")),
            )
        ],
        request(Ref(reference="Organization/ehr"), res=OBS),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "actor-unresolvable-untyped-identifier-matches-deny",
        [
            consent(
                "c1",
                "permit",
                prov("deny", actors=[actor(NPI_2222)]),
                **share_with(Ref(reference="Organization/ehr")),
            )
        ],
        request(Ref(reference="Organization/ehr"), res=OBS),
        DENY,
        ["c1@0"],
        note="actor named by identifier (system http://hl7.org/fhir/sid/us-npi) could not be",
    ),
    Scenario(
        "data-instance-unresolvable-matches-deny",
        [
            consent(
                "c1",
                "permit",
                prov("deny", data=[data("instance", "Observation/o1")]),
                **share_with(DR_A),
            )
        ],
        request(DR_A, res=OBS_BY_IDENTIFIER),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "data-instance-unresolvable-never-permits",
        [
            consent(
                "c1",
                "deny",
                prov("permit", data=[data("instance", "Observation/o1")]),
                **share_with(DR_A),
            )
        ],
        request(DR_A, res=OBS_BY_IDENTIFIER),
        DENY,
        ["c1@root"],
    ),
    Scenario(
        "data-instance-other-type-is-another-resource",
        [
            consent(
                "c1",
                "permit",
                prov("deny", data=[data("instance", "DocumentReference/d1")]),
                **share_with(DR_A),
            )
        ],
        request(DR_A, res=OBS_BY_IDENTIFIER),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "action-misspelled-matches-deny",
        [consent("c1", "permit", prov("deny", actions=[act("access")]), **share_with(DR_A))],
        request(DR_A, action="acess", res=OBS),
        DENY,
        ["c1@0"],
        note="action acess is not a consentaction code",
    ),
    Scenario(
        "action-upper-case-matches-deny",
        [consent("c1", "permit", prov("deny", actions=[act("access")]), **share_with(DR_A))],
        request(DR_A, action="ACCESS"),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "action-missing-matches-deny",
        [consent("c1", "permit", prov("deny", actions=[act("access")]), **share_with(DR_A))],
        request(DR_A, action=None, res=OBS),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "action-unknown-never-permits",
        [consent("c1", "permit", actions=[act("access")], **share_with(DR_A))],
        request(DR_A, action="acess", res=OBS),
        NONE,
    ),
    Scenario(
        "purpose-unknown-matches-deny",
        [consent("c1", "permit", prov("deny", purposes=[pou("HRESCH")]), actors=[actor(DR_A)])],
        request(DR_A, purpose="TRAET", res=OBS),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "purpose-unknown-never-permits",
        [consent("c1", "permit", **share_with(DR_A))],
        request(DR_A, purpose="TRAET", res=OBS),
        NONE,
    ),
    Scenario(
        "purpose-permit-covers-narrower",
        [consent("c1", "permit", **share_with(DR_A, purposes=[pou("TREAT")]))],
        request(DR_A, purpose="ETREAT", res=OBS),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "purpose-permit-covers-two-levels-down",
        [consent("c1", "permit", **share_with(DR_A, purposes=[pou("TREAT")]))],
        request(DR_A, purpose="BTG", res=OBS),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "purpose-permit-not-broader",
        [consent("c1", "permit", **share_with(DR_A, purposes=[pou("ETREAT")]))],
        request(DR_A, purpose="TREAT", res=OBS),
        NONE,
    ),
    Scenario(
        "purpose-deny-narrower-matches-broader-request",
        [consent("c1", "permit", prov("deny", purposes=[pou("ETREAT")]), **share_with(DR_A))],
        request(DR_A, purpose="TREAT", res=OBS),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "purpose-deny-broader-matches-narrower-request",
        [consent("c1", "permit", prov("deny", purposes=[pou("HOPERAT")]), **share_with(DR_A))],
        request(DR_A, purpose="HTEST", res=OBS),
        DENY,
        ["c1@0"],
    ),
    Scenario(
        "purpose-deny-unrelated-does-not-match",
        [consent("c1", "permit", prov("deny", purposes=[pou("HPAYMT")]), **share_with(DR_A))],
        request(DR_A, purpose="ETREAT", res=OBS),
        PERMIT,
        ["c1@root"],
    ),
    Scenario(
        "general-redact-everything-asked-is-deny",
        [
            consent(
                "c1",
                "permit",
                prov("deny", classes=[klass("MedicationStatement")]),
                **share_with(DR_A),
            )
        ],
        request(DR_A, classes=(klass("MedicationStatement"),)),
        DENY,
        ["c1@0"],
        note="would remove all content asked for",
    ),
    Scenario(
        "general-permit-only-other-class-is-deny",
        [consent("c1", "deny", prov("permit", classes=[klass("Observation")]), **share_with(DR_A))],
        request(DR_A, classes=(klass("MedicationStatement"), klass("Condition"))),
        DENY,
        ["c1@root"],
    ),
    Scenario(
        "general-redact-part-of-what-is-asked",
        [
            consent(
                "c1",
                "permit",
                prov("deny", classes=[klass("MedicationStatement")]),
                **share_with(DR_A),
            )
        ],
        request(DR_A, classes=(klass("MedicationStatement"), klass("Observation"))),
        PERMIT,
        ["c1@root"],
        [("redact", ("MedicationStatement",)), ("redact", ("PSYTHPN", "V"))],
    ),
]
