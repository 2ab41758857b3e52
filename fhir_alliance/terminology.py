"""Canonical URLs and code systems: ours defined once here, the external ones we use by name.

Our own codes are read from the CodeSystems built from ``profiles/`` (see :mod:`fhir_alliance.profiles`),
so the Python side can never drift from the published package.
"""

from __future__ import annotations

from typing import Final

#: The one canonical base for every artefact of ours (profiles, extensions, code systems, …).
CANONICAL_BASE: Final = "https://fhir-alliance.org/fhir"


def canonical(kind: str, name: str) -> str:
    """``canonical("StructureDefinition", "alliance-panel")`` → ``{CANONICAL_BASE}/StructureDefinition/alliance-panel``."""
    return f"{CANONICAL_BASE}/{kind}/{name}"


# Identifier systems for business identifiers we mint from source records.
IDENTIFIER_SYSTEM_BASE: Final = f"{CANONICAL_BASE}/identifier"

# External code systems.
LOINC: Final = "http://loinc.org"
SNOMED: Final = "http://snomed.info/sct"
UCUM: Final = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
OBSERVATION_INTERPRETATION: Final = (
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
)
DATA_ABSENT_REASON: Final = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
V3_CONFIDENTIALITY: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
V3_ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
V3_OBSERVATION_VALUE: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_PARTICIPATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
V3_ROLE_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
CONSENT_SCOPE: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION: Final = "http://terminology.hl7.org/CodeSystem/consentaction"
CONSENT_POLICY: Final = "http://terminology.hl7.org/CodeSystem/consentpolicycodes"
PROVENANCE_PARTICIPANT_TYPE: Final = (
    "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
)
PROVENANCE_ENTITY_ROLE: Final = "http://hl7.org/fhir/provenance-entity-role"
SDC_OBSERVATION_EXTRACT: Final = (
    "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-observationExtract"
)
R5_CONSENT_DECISION_EXTENSION: Final = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Consent.decision"
)

# Security labels (meta.security) this project applies.
LABEL_RESTRICTED: Final = (V3_CONFIDENTIALITY, "R")
LABEL_BEHAVIORAL_HEALTH: Final = (V3_ACT_CODE, "BH")
LABEL_PSYCHOTHERAPY_NOTE: Final = (V3_ACT_CODE, "PSYTHPN")
LABEL_AI_ASSISTED: Final = (V3_OBSERVATION_VALUE, "AIAST")
LABEL_TEST_DATA: Final = (V3_ACT_REASON, "HTEST")
