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

# --- Alliance observations: our CodeSystems, extensions, profiles and Questionnaires. ---------------
#: Instruments (panel codes), their items (``wai-sr.3``) and scores (``wai-sr.bond``), plus the codes
#: of rupture/repair events and their components.
CS_ALLIANCE_MEASURES: Final = canonical("CodeSystem", "alliance-measures")
CS_ALLIANCE_DIMENSIONS: Final = canonical("CodeSystem", "alliance-dimensions")
CS_RATING_SCALES: Final = canonical("CodeSystem", "alliance-rating-scales")
CS_RATER_ROLES: Final = canonical("CodeSystem", "alliance-rater-roles")
CS_RUPTURE_TYPES: Final = canonical("CodeSystem", "rupture-types")
CS_RUPTURE_MARKERS: Final = canonical("CodeSystem", "rupture-markers")
CS_REPAIR_STRATEGIES: Final = canonical("CodeSystem", "repair-strategies")
#: Identifier system of automated tools (Device identifiers are ``{tool}@{version}``).
IDENTIFIER_SYSTEM_TOOLS: Final = f"{IDENTIFIER_SYSTEM_BASE}/automated-rater-tool"

EXT_RATED_COUNTERPART: Final = canonical("StructureDefinition", "rated-counterpart")
EXT_RATER_ROLE: Final = canonical("StructureDefinition", "rater-role")
EXT_AUTOMATED_RATER: Final = canonical("StructureDefinition", "automated-rater")
EXT_RATING_SCALE: Final = canonical("StructureDefinition", "rating-scale")
EXT_REPAIRS_RUPTURE: Final = canonical("StructureDefinition", "repairs-rupture")

PROFILE_ALLIANCE_PANEL: Final = canonical("StructureDefinition", "alliance-panel")
PROFILE_ALLIANCE_SCORE: Final = canonical("StructureDefinition", "alliance-score")
PROFILE_ALLIANCE_ITEM: Final = canonical("StructureDefinition", "alliance-item")
PROFILE_DIMENSION_RATING: Final = canonical("StructureDefinition", "alliance-dimension-rating")
PROFILE_RUPTURE: Final = canonical("StructureDefinition", "alliance-rupture")
PROFILE_REPAIR: Final = canonical("StructureDefinition", "alliance-repair")
PROFILE_AUTOMATED_PROVENANCE: Final = canonical(
    "StructureDefinition", "alliance-automated-provenance"
)
