"""``load_revocation(known_consents=...)`` takes what an embedder holds: records or identifiers."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_alliance.errors import InputError
from fhir_alliance.model.common import Identifier
from fhir_alliance.schemas.consent import load_revocation
from tests.consent.builders import CONSENT_IDS, consent

REVOCATION: dict[str, Any] = {
    "kind": "consent-revocation",
    "consent": f"{CONSENT_IDS}|c1",
    "at": "2025-05-01T10:00:00+00:00",
}


@pytest.mark.parametrize(
    "known",
    [
        [consent("c1", "permit")],
        [Identifier(CONSENT_IDS, "c1")],
        {Identifier(CONSENT_IDS, "c1"): consent("c1", "permit")},
        [f"{CONSENT_IDS}|c1"],
    ],
    ids=["records", "identifiers", "mapping", "text"],
)
def test_known_consents_as_records_or_identifiers(known: Any) -> None:
    """Records, identifiers, a mapping by identifier or ``system|value`` text all name the consent."""
    assert load_revocation(REVOCATION, known_consents=known).consent == Identifier(
        CONSENT_IDS, "c1"
    )


def test_unknown_consent_still_refused() -> None:
    """A revocation of a consent not among the records is refused at ``consent``."""
    with pytest.raises(InputError) as info:
        load_revocation(REVOCATION, known_consents=[consent("c2", "permit")])
    assert [i.path for i in info.value.issues] == ["consent"]


def test_something_else_is_a_clear_error() -> None:
    """An item that is neither a record nor an identifier is refused naming known_consents."""
    with pytest.raises(InputError) as info:
        load_revocation(REVOCATION, known_consents=[42])
    assert [i.path for i in info.value.issues] == ["known_consents.0"]
