"""Canonical URLs and code systems: ours defined once here, the external ones we use by name.

Our own codes are read from the CodeSystems built from ``profiles/`` (see :mod:`fhir_alliance.profiles`),
so the Python side can never drift from the published package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache, lru_cache
from typing import Any, Final

from fhir_alliance import profiles
from fhir_alliance.errors import ProfilesPackageError

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
LABEL_VERY_RESTRICTED: Final = (V3_CONFIDENTIALITY, "V")
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

# --- Consent (fhir_alliance.mapping.consent, profiles/input/fsh/consent-*.fsh) -------------------
# Every code list a consent is checked against lives here, in one place.

CS_CONSENT_KINDS: Final = canonical("CodeSystem", "consent-kind")
CS_CONSENT_STATES: Final = canonical("CodeSystem", "consent-state")
CS_CONSENT_VERIFICATION_METHODS: Final = canonical("CodeSystem", "consent-verification-method")

EXT_CONSENT_STATE: Final = canonical("StructureDefinition", "consent-state")
EXT_CONSENT_STATUS_CHANGE: Final = canonical("StructureDefinition", "consent-status-change")
EXT_CONSENT_VERIFICATION_METHOD: Final = canonical(
    "StructureDefinition", "consent-verification-method"
)
EXT_CONSENT_WITNESS: Final = canonical("StructureDefinition", "consent-witness")
EXT_CONSENT_GRANTEE: Final = canonical("StructureDefinition", "consent-grantee")
EXT_CONSENT_CONTROLLER: Final = canonical("StructureDefinition", "consent-controller")
EXT_CONSENT_INTERVENTION: Final = canonical("StructureDefinition", "consent-intervention")
EXT_CONSENT_POLICY_AUTHORITY: Final = canonical("StructureDefinition", "consent-policy-authority")
#: R5 modifier extensions: a provision that states when the base decision applies (not an
#: exception), and the explicit effect of a nested provision that does not negate its parent.
EXT_CONSENT_ROOT_PROVISION: Final = canonical("StructureDefinition", "consent-root-provision")
EXT_CONSENT_PROVISION_TYPE: Final = canonical("StructureDefinition", "consent-provision-type")
#: R4 ``Consent.dateTime`` carried in R5 (whose ``date`` is a date only), cross-version extension.
R4_CONSENT_DATETIME_EXTENSION: Final = (
    "http://hl7.org/fhir/4.0/StructureDefinition/extension-Consent.dateTime"
)

PROFILE_CONSENT_SHARING: Final = canonical("StructureDefinition", "consent-sharing")
PROFILE_CONSENT_TREATMENT: Final = canonical("StructureDefinition", "consent-treatment")
PROFILE_CONSENT_RECORDING: Final = canonical("StructureDefinition", "consent-recording")
PROFILE_CONSENT_RESTRICTION: Final = canonical("StructureDefinition", "consent-restriction")

RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"
CONSENT_VERIFICATION: Final = "http://terminology.hl7.org/CodeSystem/consent-verification"

#: LOINC consent categories: Patient Consent, Privacy policy acknowledgement, Release of information.
CONSENT_CATEGORY_CODES: Final = frozenset({"59284-0", "57016-8", "64292-6"})
#: consentscope (R4) codes.
CONSENT_SCOPE_CODES: Final = frozenset({"patient-privacy", "research", "treatment", "adr"})
#: consentaction codes.
CONSENT_ACTION_CODES: Final = frozenset({"collect", "access", "use", "disclose", "correct"})
#: v3-ActReason codes of the v3 PurposeOfUse value set that a consent may name.
PURPOSE_OF_USE_CODES: Final = frozenset(
    {
        "TREAT", "ETREAT", "BTG", "ERTREAT", "COC", "CLINTRL", "POPHLTH",
        "HPAYMT", "CLMATTCH", "COVAUTH", "COVERAGE", "ELIGDTRM", "ELIGVER", "ENROLLM", "REMITADV",
        "HOPERAT", "CAREMGT", "DONAT", "FRAUD", "GOV", "HACCRED", "HCOMPL", "HDECD", "HDIRECT",
        "HDM", "HLEGAL", "HOUTCOMS", "HPRGRP", "HQUALIMP", "HSYSADMIN", "MEMADMIN", "PATADMIN",
        "PATSFTY", "PERFMSR", "RECORDMGT", "SYSDEV", "HTEST", "TRAIN", "HMARKT",
        "HRESCH", "CLINTRCH", "PATRQT", "FAMRQT", "PWATRNY", "SUPNWK", "PUBHLTH", "DISASTER",
        "THREAT",
    }
)  # fmt: skip
#: v3-Confidentiality codes usable as security labels.
CONFIDENTIALITY_CODES: Final = frozenset({"U", "L", "M", "N", "R", "V"})
#: v3-ActCode sensitivity codes (InformationSensitivityPolicy) usable as security labels.
SENSITIVITY_CODES: Final = frozenset(
    {
        "ETH", "ETHUD", "OPIOIDUD", "SUD", "DRGIS", "PSY", "PSYTHPN", "BH", "MH", "SEX", "HIV",
        "STD", "SDV", "SICKLE", "GDIS", "DEMO", "DIA", "COMPT", "HRCOMPT", "RESCOMPT",
    }
)  # fmt: skip

#: v3-ObservationValue labels this project applies itself (AI-assisted content) and so lets consents name.
OBSERVATION_VALUE_LABEL_CODES: Final = frozenset({LABEL_AI_ASSISTED[1]})

#: The security labels a consent may name, by code system (the JSON form and the FHIR readers
#: check consents against these).
CONSENT_LABEL_CODES: Final[Mapping[str, frozenset[str]]] = {
    V3_CONFIDENTIALITY: CONFIDENTIALITY_CODES,
    V3_ACT_CODE: SENSITIVITY_CODES,
    V3_OBSERVATION_VALUE: OBSERVATION_VALUE_LABEL_CODES,
}
#: The security labels a resource may carry in ``meta.security``, by HL7 code system: what a
#: consent may name, and v3 PurposeOfUse codes (``HTEST`` marks test data). A code of one of
#: these systems that is not listed is refused: the engine must not take it for no label.
RESOURCE_LABEL_CODES: Final[Mapping[str, frozenset[str]]] = {
    **CONSENT_LABEL_CODES,
    V3_ACT_REASON: PURPOSE_OF_USE_CODES,
}
#: Other spellings of the HL7 v3 code systems of security labels, to their canonical URIs: the
#: OIDs (``urn:oid:2.16.840.1.113883.5.4`` is v3 ActCode) and the FHIR STU3 URLs.
V3_LABEL_SYSTEM_ALIASES: Final[Mapping[str, str]] = {
    "urn:oid:2.16.840.1.113883.5.4": V3_ACT_CODE,
    "urn:oid:2.16.840.1.113883.5.25": V3_CONFIDENTIALITY,
    "urn:oid:2.16.840.1.113883.5.83": V3_OBSERVATION_VALUE,
    "urn:oid:2.16.840.1.113883.5.8": V3_ACT_REASON,
    "http://hl7.org/fhir/v3/ActCode": V3_ACT_CODE,
    "http://hl7.org/fhir/v3/Confidentiality": V3_CONFIDENTIALITY,
    "http://hl7.org/fhir/v3/ObservationValue": V3_OBSERVATION_VALUE,
    "http://hl7.org/fhir/v3/ActReason": V3_ACT_REASON,
}

#: Other spellings of v3-ParticipationType (a consent actor's role), to its canonical URI: its
#: OID and the FHIR STU3 URL. A deny naming the recipient's role that way must still match.
PARTICIPATION_TYPE_ALIASES: Final[Mapping[str, str]] = {
    "urn:oid:2.16.840.1.113883.5.90": V3_PARTICIPATION_TYPE,
    "http://hl7.org/fhir/v3/ParticipationType": V3_PARTICIPATION_TYPE,
}

#: Other spellings of the external code systems a resource's ``code`` uses, to their canonical
#: URIs: the HL7 OIDs of LOINC and SNOMED CT (a consent names ``http://loinc.org``).
CODE_SYSTEM_ALIASES: Final[Mapping[str, str]] = {
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
}
#: Other spellings of the code system of resource types in a consent's ``class``, to the one the
#: consent readers write: R5's ``fhir-types`` (the engine reads both alike; the R5 writer puts only
#: ``resource-types`` codes in ``resourceType``).
CLASS_SYSTEM_ALIASES: Final[Mapping[str, str]] = {
    "http://hl7.org/fhir/fhir-types": RESOURCE_TYPES,
    # the value set's URL given as the code system (R4's consent-content-class binds to it)
    "http://hl7.org/fhir/ValueSet/resource-types": RESOURCE_TYPES,
}

#: The code systems whose codes consents and requests are matched on, in their canonical form.
MATCHED_CODE_SYSTEMS: Final = frozenset(
    {
        LOINC,
        SNOMED,
        V3_CONFIDENTIALITY,
        V3_ACT_CODE,
        V3_ACT_REASON,
        V3_OBSERVATION_VALUE,
        V3_PARTICIPATION_TYPE,
        V3_ROLE_CODE,
        CONSENT_SCOPE,
        CONSENT_ACTION,
        RESOURCE_TYPES,
    }
)
#: A bare OID (``2.16.840.1.113883.6.1``), as CDA-derived systems give a code system or an
#: identifier system (FHIR wants ``urn:oid:`` before it).
_BARE_OID: Final = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")
#: The edition and version URIs of SNOMED CT (``http://snomed.info/sct/731000124108``, with
#: ``/version/20230301``): they belong in ``Coding.version`` but are sent as the system too.
_SNOMED_EDITION: Final = re.compile(r"http://snomed\.info/sct/[0-9]+(?:/version/[0-9]+)?")


def _uri_form(uri: str) -> str:
    """``uri`` in the form that other spellings of one URI are compared in: ``urn:oid:`` in lower
    case and before a bare OID; the scheme and host of an http(s) URL in lower case (RFC 3986
    says they are case-insensitive). Spellings of one and the same URI, no more."""
    lower = uri[:8].casefold()
    if lower == "urn:oid:":
        return "urn:oid:" + uri[8:]
    if _BARE_OID.fullmatch(uri):
        return "urn:oid:" + uri
    for scheme in ("http://", "https://"):
        if lower.startswith(scheme):
            host, slash, path = uri[len(scheme) :].partition("/")
            return scheme + host.casefold() + slash + path
    return uri


def _lenient_form(uri: str) -> str:
    """:func:`_uri_form`, also with https read as http and without a trailing slash: for the
    well-known code systems only, whose owners publish no other URI under those spellings."""
    form = _uri_form(uri)
    if form.startswith("https://"):
        form = "http://" + form[len("https://") :]
    return form.rstrip("/") if form.count("/") > 2 else form


_SPELLINGS: Final[Mapping[str, str]] = {
    _lenient_form(spelling): canonical
    for aliases in (
        {s: s for s in MATCHED_CODE_SYSTEMS},
        V3_LABEL_SYSTEM_ALIASES,
        PARTICIPATION_TYPE_ALIASES,
        CODE_SYSTEM_ALIASES,
        CLASS_SYSTEM_ALIASES,
    )
    for spelling, canonical in aliases.items()
}


@lru_cache(maxsize=4096)
def canonical_system(system: str) -> str:
    """The canonical URI of a code system consents are matched on, however it is spelt: its OID
    (``urn:oid:`` in any case, or bare), its FHIR STU3 URL, https for http, a trailing slash, the
    scheme and host in upper case, a SNOMED CT edition URI. Any other system is returned as it
    is: a code given another way must not slip past a deny that names it."""
    form = _lenient_form(system)
    found = _SPELLINGS.get(form)
    if found is not None:
        return found
    if _SNOMED_EDITION.fullmatch(form):
        return SNOMED
    return system


#: Other spellings of identifier systems, to the one FHIR names: the HL7 OIDs of the US NPI and
#: SSN (a consent naming a practitioner by NPI must meet a request naming the NPI by OID).
IDENTIFIER_SYSTEM_ALIASES: Final[Mapping[str, str]] = {
    "urn:oid:2.16.840.1.113883.4.6": "http://hl7.org/fhir/sid/us-npi",
    "urn:oid:2.16.840.1.113883.4.1": "http://hl7.org/fhir/sid/us-ssn",
}
#: The identifier system whose values are URIs (an organisation by its OID, ``urn:oid:…``).
URI_IDENTIFIER_SYSTEM: Final = "urn:ietf:rfc:3986"


@lru_cache(maxsize=4096)
def canonical_identifier(system: str, value: str) -> tuple[str, str]:
    """``(system, value)`` of an identifier in the form identifiers are compared in: the system
    as an equal URI (``urn:oid:`` in lower case and before a bare OID, an http(s) scheme and host
    in lower case, the OIDs of NPI and SSN as their FHIR URIs) and, under ``urn:ietf:rfc:3986``,
    the value likewise. Only spellings of one and the same URI are equated: ``https`` and a
    trailing slash may name another system and are left as they are."""
    form = _uri_form(system)
    form = IDENTIFIER_SYSTEM_ALIASES.get(form, form)
    if form == URI_IDENTIFIER_SYSTEM:
        value = _uri_form(value)
    return form, value


def codes(code_system_name: str) -> dict[str, str]:
    """The codes of one of our CodeSystems, read from the built profiles package:
    ``{code: display}`` (``""`` when a concept has no display), nested concepts included, in
    definition order. ``code_system_name`` is the CodeSystem's id, name or canonical URL.

    Raises :class:`~fhir_alliance.errors.ArtefactNotFoundError` for an unknown CodeSystem and
    :class:`~fhir_alliance.errors.ProfilesPackageError` for one whose content is not complete.
    """
    return dict(_codes(code_system_name))


@cache
def _codes(code_system_name: str) -> Mapping[str, str]:
    system = profiles.code_system(code_system_name)
    if system.get("content") != "complete":
        raise ProfilesPackageError(
            f"CodeSystem {system.get('id')!r} does not list its codes "
            f"(content={system.get('content')!r}, expected 'complete')"
        )
    found: dict[str, str] = {}
    for concept in _walk(system.get("concept", ())):
        code = concept.get("code")
        if not isinstance(code, str) or code in found:
            raise ProfilesPackageError(
                f"CodeSystem {system.get('id')!r} has a missing or repeated code {code!r}"
            )
        display = concept.get("display")
        found[code] = display if isinstance(display, str) else ""
    return found


def _walk(concepts: Iterable[Any]) -> Iterable[Mapping[str, Any]]:
    for concept in concepts:
        if isinstance(concept, Mapping):
            yield concept
            yield from _walk(concept.get("concept", ()))
