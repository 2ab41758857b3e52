"""A single-valued extension of a Consent given twice: with the same value it is read once; with
another value it is a ``MappingError`` at the second, never read as the first."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_alliance.errors import MappingError
from fhir_alliance.mapping.consent import R4, R5, from_consent, to_consent
from fhir_alliance.schemas.consent import load_consent
from fhir_alliance.terminology import (
    EXT_CONSENT_POLICY_AUTHORITY,
    EXT_CONSENT_VERIFICATION_METHOD,
    R4_CONSENT_DATETIME_EXTENSION,
)

ROOT = Path(__file__).resolve().parents[2]


def _fhir(name: str, version: str) -> dict[str, Any]:
    data = json.loads((ROOT / "examples" / "consent" / f"{name}.json").read_text())
    return to_consent(load_consent(data), version=version)


def _repeat(extensions: list[dict[str, Any]], url: str, key: str, value: str) -> int:
    """Append a second extension ``url`` with ``value`` (or the first's when empty); its index."""
    [first] = [e for e in extensions if e["url"] == url]
    extensions.append({"url": url, key: value or first[key]})
    return len(extensions) - 1


def test_r5_recorded_date_time_twice_differing_is_refused() -> None:
    """R5: two R4 ``Consent.dateTime`` extensions on one day but at different times: before, the
    first was read as the consent's date (which orders consents under most-recent-wins)."""
    resource = _fhir("sharing", R5)
    n = _repeat(resource["extension"], R4_CONSENT_DATETIME_EXTENSION, "valueDateTime",
                "2025-03-01T23:00:00+01:00")  # fmt: skip
    with pytest.raises(MappingError) as caught:
        from_consent(resource)
    assert caught.value.element == f"Consent.extension[{n}].valueDateTime"


def test_r5_recorded_date_time_twice_the_same_is_read() -> None:
    """R5: the same dateTime extension twice reads as once."""
    resource = _fhir("sharing", R5)
    expected = from_consent(copy.deepcopy(resource))
    _repeat(resource["extension"], R4_CONSENT_DATETIME_EXTENSION, "valueDateTime", "")
    assert from_consent(resource) == expected


@pytest.mark.parametrize("same", [False, True])
def test_r5_policy_authority_twice(same: bool) -> None:
    """R5: the policy basis's authority twice: the same value is read once; another value is an
    error at the second (before, the first was read)."""
    resource = _fhir("restriction", R5)
    expected = from_consent(copy.deepcopy(resource))
    extensions = resource["policyBasis"]["extension"]
    n = _repeat(extensions, EXT_CONSENT_POLICY_AUTHORITY, "valueUri",
                "" if same else "https://other-authority.example.org")  # fmt: skip
    if same:
        assert from_consent(resource) == expected
        return
    with pytest.raises(MappingError) as caught:
        from_consent(resource)
    assert caught.value.element == f"Consent.policyBasis.extension[{n}].valueUri"


@pytest.mark.parametrize("same", [False, True])
def test_r4_verification_method_twice(same: bool) -> None:
    """R4: the verification method twice: the same value is read once (before, it was refused as
    missing); another value is an error at the second (before: "missing", at the extension list)."""
    resource = _fhir("sharing", R4)
    expected = from_consent(copy.deepcopy(resource))
    extensions = resource["verification"][0]["extension"]
    n = _repeat(extensions, EXT_CONSENT_VERIFICATION_METHOD, "valueCode", "" if same else "verbal")
    if same:
        assert from_consent(resource) == expected
        return
    with pytest.raises(MappingError) as caught:
        from_consent(resource)
    assert caught.value.element == f"Consent.verification[0].extension[{n}].valueCode"
