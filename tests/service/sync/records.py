"""Synthetic records for the sync tests, in our JSON form: alliance ratings, SRS administrations,
ruptures (PSYTHPN), sharing consents and revocations. Every identifier carries a per-test token so
that runs against a shared remote FHIR server never meet each other's resources."""

from __future__ import annotations

import uuid
from typing import Any

EHR = "Organization/clinic-ehr"
RECORD_SYSTEM = "https://clinic.example.org/alliance-records"
CONSENT_SYSTEM = "https://clinic.example.org/consents"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
IRCP = {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}


def run_token() -> str:
    return uuid.uuid4().hex[:10]


def rating(run: str, n: int, patient: str = "Patient/p1", *, value: int = 4) -> dict[str, Any]:
    """A trust rating: one Observation."""
    return {
        "kind": "dimension-rating",
        "id": f"{RECORD_SYSTEM}|trust-{run}-{n}",
        "dimension": "trust",
        "scale": "likert-1-5",
        "value": value,
        "patient": {"reference": patient},
        "counterpart": {"reference": "Practitioner/t1"},
        "effective": "2026-11-20T16:05:00+00:00",
        "rater": {"role": "client"},
    }


def srs(run: str, n: int, patient: str = "Patient/p1") -> dict[str, Any]:
    """An SRS administration: a panel with item and score Observations."""
    return {
        "kind": "instrument-administration",
        "id": f"{RECORD_SYSTEM}|srs-{run}-{n}",
        "instrument": "srs",
        "patient": {"reference": patient},
        "counterpart": {"reference": "Practitioner/t1"},
        "effective": "2026-11-20T15:50:00+00:00",
        "rater": {"role": "client"},
        "responses": {"1": 9.1, "2": 8.7, "3": 8.0, "4": 9.2},
    }


def rupture(run: str, n: int, patient: str = "Patient/p1") -> dict[str, Any]:
    """An observer-rated rupture with session narrative: psychotherapy-note content (PSYTHPN)."""
    return {
        "kind": "rupture",
        "id": f"{RECORD_SYSTEM}|rupture-{run}-{n}",
        "rupture_type": "withdrawal",
        "markers": ["minimal-response"],
        "tension": 3,
        "repaired": False,
        "patient": {"reference": patient},
        "counterpart": {"reference": "Practitioner/t1"},
        "effective": "2026-11-20T15:30:00+00:00",
        "rater": {"role": "observer", "who": {"reference": "Practitioner/t2"}},
        "narrative": "Synthetic session narrative: the client went quiet after homework review.",
    }


def consent_id(run: str, patient: str, n: int = 1) -> str:
    return f"{CONSENT_SYSTEM}|share-{run}-{patient.rsplit('/', 1)[-1]}-{n}"


def sharing_consent(
    run: str,
    patient: str = "Patient/p1",
    *,
    n: int = 1,
    recipient: str = EHR,
    permit_psythpn: bool = False,
) -> dict[str, Any]:
    """An active consent: the patient lets ``recipient`` have their alliance data for treatment
    (AI-assisted content excepted; PSYTHPN only with ``permit_psythpn``, which names it)."""
    provisions: list[dict[str, Any]] = [
        {"type": "deny", "security_labels": [{"system": OBSERVATION_VALUE, "code": "AIAST"}]}
    ]
    if permit_psythpn:
        provisions.append(
            {"type": "permit", "security_labels": [{"system": ACT_CODE, "code": "PSYTHPN"}]}
        )
    return {
        "kind": "consent",
        "id": consent_id(run, patient, n),
        "consent_kind": "sharing",
        "patient": {"reference": patient, "type": "Patient"},
        "status": "active",
        "decision": "permit",
        "date": "2026-11-01T09:00:00+00:00",
        "grantor": {"reference": patient, "type": "Patient"},
        "grantees": [{"reference": recipient, "type": "Organization"}],
        "manager": {"reference": "Organization/clinic", "type": "Organization"},
        "period": {"start": "2026-11-01T00:00:00+00:00"},
        "history": [
            {
                "status": "active",
                "at": "2026-11-01T09:00:00+00:00",
                "by": {"reference": patient, "type": "Patient"},
            }
        ],
        "verification": [
            {
                "method": "written",
                "verified_at": "2026-11-01T09:00:00+00:00",
                "witness": {"reference": "Practitioner/t1", "type": "Practitioner"},
            }
        ],
        "policy_basis": [{"uri": "https://clinic.example.org/policies/alliance-data-sharing-v2"}],
        "categories": [{"system": "http://loinc.org", "code": "59284-0"}],
        "provision": {
            "actors": [
                {"role": IRCP, "reference": {"reference": recipient, "type": "Organization"}}
            ],
            "actions": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                    "code": "disclose",
                }
            ],
            "purposes": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
            "provisions": provisions,
        },
    }


def revocation(run: str, patient: str = "Patient/p1", *, n: int = 1) -> dict[str, Any]:
    """The patient withdraws consent ``n``."""
    return {
        "kind": "consent-revocation",
        "consent": consent_id(run, patient, n),
        "at": "2026-11-25T12:00:00+00:00",
        "by": {"reference": patient, "type": "Patient"},
    }
