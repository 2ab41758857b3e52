"""The opaque id of a patient: what console URLs carry instead of the patient key (a reference
or an identifier, which are PHI). It is an HMAC-SHA256 of the key under the installation's own
secret (the store's meta entry :data:`META_PATIENT_TOKEN_KEY`, made once by migration 0008 and
never logged), shaped as a UUID (version 8, custom), so that nobody without the secret can compute
a patient's id from a guessed reference or MRN and look for it in browser history or a proxy log.
The store keeps every token it has seen in ``patient_tokens`` so that a token is looked up
directly, never by hashing every patient; ``Store.patient_token`` computes them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

__all__ = ["META_PATIENT_TOKEN_KEY", "new_patient_token_key", "patient_token"]

#: The store's meta entry holding the secret (migration 0008 repeats the name and the token's
#: computation: migrations do not import the code they outlive; a test checks that they agree).
META_PATIENT_TOKEN_KEY: Final = "console.patient_token_key"  # noqa: S105 (a name, not the secret)


def new_patient_token_key() -> str:
    """A fresh secret: 256 random bits as URL-safe text."""
    return secrets.token_urlsafe(32)


def patient_token(secret: str, patient: str) -> str:
    """The opaque id of the patient key ``patient`` under ``secret``: the first 128 bits of
    HMAC-SHA256(secret, patient) with the UUID version (8) and RFC 9562 variant bits set, in the
    canonical 8-4-4-4-12 text form. Never equal to an earlier UUIDv5 token (version 5)."""
    digest = bytearray(
        hmac.new(secret.encode("utf-8"), patient.encode("utf-8"), hashlib.sha256).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
