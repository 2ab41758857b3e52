"""Reading a CapabilityStatement and choosing the idempotent write strategy from it."""

from typing import Any

import pytest

from fhir_alliance.client.capabilities import ServerCapabilities, WriteStrategy, release_of
from fhir_alliance.errors import MappingError


def statement(version: str = "4.0.1", **observation: Any) -> dict[str, Any]:
    obs = {
        "type": "Observation",
        "interaction": [{"code": c} for c in ("read", "create", "update", "delete", "search-type")],
        "versioning": "versioned-update",
        "searchParam": [{"name": "identifier", "type": "token"}],
    } | observation
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": version,
        "software": {"name": "Test"},
        "rest": [
            {
                "mode": "server",
                "resource": [obs],
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }


def test_update_create_gives_deterministic_put() -> None:
    """updateCreate with update → PUT to a deterministic id, the best strategy."""
    caps = ServerCapabilities.from_capability_statement(
        statement(updateCreate=True, conditionalCreate=True)
    )
    assert caps.write_strategy("Observation") is WriteStrategy.PUT_DETERMINISTIC_ID
    assert caps.release == "R4" and caps.wire_version == "4.0.1"
    assert caps.supports_transaction and caps.supports_batch


def test_conditional_create_without_update_create() -> None:
    """conditionalCreate but no updateCreate → If-None-Exist conditional create."""
    caps = ServerCapabilities.from_capability_statement(statement(conditionalCreate=True))
    assert caps.write_strategy("Observation") is WriteStrategy.CONDITIONAL_CREATE


def test_plain_create_falls_back_to_search_then_create() -> None:
    """Neither flag, but create and identifier search → search by identifier, then create."""
    caps = ServerCapabilities.from_capability_statement(statement())
    assert caps.write_strategy("Observation") is WriteStrategy.SEARCH_THEN_CREATE


def test_no_strategy_when_nothing_fits() -> None:
    """An unlisted type, or one without create, has no idempotent write."""
    caps = ServerCapabilities.from_capability_statement(statement(interaction=[{"code": "read"}]))
    assert caps.write_strategy("Observation") is None
    assert caps.write_strategy("Consent") is None


def test_gaps_are_named_in_plain_words() -> None:
    """Missing Consent, conditional flags and search params each show up as a gap."""
    caps = ServerCapabilities.from_capability_statement(statement("5.0.0"))
    gaps = caps.gaps()
    assert caps.release == "R5" and caps.wire_version == "5.0.0"
    assert "Consent: not listed in the CapabilityStatement" in gaps
    assert any("conditionalCreate not declared" in g for g in gaps)
    assert any("updateCreate not declared" in g for g in gaps)
    full = ServerCapabilities.from_capability_statement(
        statement(updateCreate=True, conditionalCreate=True)
    )
    assert full.gaps(["Observation"]) == []


def test_unknown_version_is_a_gap() -> None:
    """fhirVersion 3.0.2 (STU3) is reported as neither R4 nor R5."""
    caps = ServerCapabilities.from_capability_statement(statement("3.0.2"))
    assert caps.release is None
    assert any("neither R4" in g for g in caps.gaps())
    assert release_of("4.3.0") == "R4B"


@pytest.mark.parametrize(
    ("bad", "element"),
    [
        ({"resourceType": "Patient"}, "resourceType"),
        ({"resourceType": "CapabilityStatement", "fhirVersion": 4}, "fhirVersion"),
        ({"resourceType": "CapabilityStatement", "rest": {}}, "rest"),
        (
            {"resourceType": "CapabilityStatement", "rest": [{"resource": [{"interaction": []}]}]},
            "rest[0].resource[0].type",
        ),
    ],
)
def test_malformed_statement_names_the_element(bad: dict[str, Any], element: str) -> None:
    """A statement that does not fit raises MappingError naming where."""
    with pytest.raises(MappingError) as caught:
        ServerCapabilities.from_capability_statement(bad)
    assert caught.value.element == element
