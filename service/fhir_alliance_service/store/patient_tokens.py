"""The opaque id of a patient: what console URLs carry instead of the patient key (a reference
or an identifier, which are PHI). It is the UUIDv5 of the key; the store keeps every token it has
seen in ``patient_tokens`` so that a token is looked up directly, never by hashing every patient.
"""

from __future__ import annotations

import uuid
from typing import Final

from fhir_alliance_service.uuids import uuid5_text

__all__ = ["PATIENT_TOKEN_NAMESPACE", "patient_token"]

#: Migration 0003 repeats this value (migrations do not import the code they outlive).
PATIENT_TOKEN_NAMESPACE: Final = uuid.uuid5(
    uuid.NAMESPACE_URL, "https://fhir-alliance.org/console/patient"
)


def patient_token(patient: str) -> str:
    """The opaque id of the patient key ``patient`` (a UUID in its canonical text form)."""
    return uuid5_text(PATIENT_TOKEN_NAMESPACE, patient)
