"""Test payloads for intake: the shipped examples (our JSON form), fresh copies on every call."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from fhir_alliance_service.store.interface import StoredRecord

ROOT = Path(__file__).resolve().parents[3]
OBSERVATIONS = ROOT / "examples" / "observations"
CONSENTS = ROOT / "examples" / "consent"

#: The patient of the example observations, and of the example sharing consent.
OBSERVATION_PATIENT = "Patient/example-client"
CONSENT_PATIENT = "Patient/p1"
EHR = "Organization/ehr-clinic"


@cache
def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def observation(name: str) -> dict[str, Any]:
    """``examples/observations/<name>.json`` (e.g. ``srs-administration``)."""
    data: dict[str, Any] = copy.deepcopy(_read(OBSERVATIONS / f"{name}.json"))
    return data


def consent(name: str) -> dict[str, Any]:
    """``examples/consent/<name>.json`` (e.g. ``sharing``, ``revocation/withdraw-sharing``)."""
    data: dict[str, Any] = copy.deepcopy(_read(CONSENTS / f"{name}.json"))
    return data


def for_patient(payload: dict[str, Any], patient: str, *, suffix: str = "") -> dict[str, Any]:
    """``payload`` about ``patient`` instead, with ``suffix`` appended to its identifier value."""
    out = copy.deepcopy(payload)
    out["patient"] = {"reference": patient}
    out["id"] = out["id"] + suffix
    if out.get("kind") == "consent" and isinstance(out.get("grantor"), dict):
        out["grantor"] = {"reference": patient, "type": "Patient"}
    return out


def srs_questionnaire_response(patient: str = "Patient/p1") -> dict[str, Any]:
    """A completed SRS QuestionnaireResponse of our Questionnaire, item 3 unanswered."""
    return {
        "resourceType": "QuestionnaireResponse",
        "id": "qr-1",
        "identifier": {"system": "https://clinic.example.org/qr", "value": "qr-1"},
        "questionnaire": "https://fhir-alliance.org/fhir/Questionnaire/srs",
        "status": "completed",
        "subject": {"reference": patient},
        "authored": "2026-11-20T15:50:00+00:00",
        "item": [
            {"linkId": "1", "answer": [{"valueDecimal": 9.1}]},
            {"linkId": "2", "answer": [{"valueDecimal": 8.7}]},
            {"linkId": "3"},
            {"linkId": "4", "answer": [{"valueDecimal": 9.0}]},
        ],
    }


def plain_sharing(
    patient: str = CONSENT_PATIENT, *, value: str = "c-plain-1", recipient: str = EHR
) -> dict[str, Any]:
    """The example sharing consent without its exceptions: permits ``recipient`` to receive
    ``patient``'s data for TREAT and HOPERAT from 2025-03-01 to 2026-03-01."""
    out = for_patient(consent("sharing"), patient)
    out["id"] = f"https://clinic.example.org/consents|{value}"
    out["grantees"] = [{"reference": recipient, "type": "Organization"}]
    out["provision"]["actors"][0]["reference"] = {"reference": recipient, "type": "Organization"}
    out["provision"]["provisions"] = []
    return out


def plain_restriction(
    patient: str = CONSENT_PATIENT, *, value: str = "r-plain-1", recipient: str = EHR
) -> dict[str, Any]:
    """A restriction (base decision deny) naming only ``recipient``, in force 2025-04-10 to 2027-04-10."""
    out = for_patient(consent("restriction"), patient)
    out["id"] = f"https://clinic.example.org/consents|{value}"
    out["provision"]["actors"] = [
        {
            "role": out["provision"]["actors"][0]["role"],
            "reference": {"reference": recipient, "type": "Organization"},
        }
    ]
    out["provision"].pop("provisions", None)
    return out


def stored(body: dict[str, Any], *, family: str, at: datetime) -> StoredRecord:
    """``body`` as the store would hand it back (version 1, stored at ``at``), without a store."""
    return StoredRecord(
        record_id=str(uuid.uuid4()),
        identifier=str(body.get("id")),
        kind=str(body.get("kind")),
        family=family,
        patient=str(body.get("patient", {}).get("reference")),
        version=1,
        body=body,
        content_hash="0" * 64,
        created_at=at,
        updated_at=at,
    )
