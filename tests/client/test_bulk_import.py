"""``$import`` (FHIR Bulk Data import): capability detection, kick-off, polling and its faults.

Faults are injected with pytest-httpserver; the happy paths run against the suite's real server in
tests/test_push_bulk.py.
"""

from fhir_alliance.client import ServerCapabilities


def _statement(rest: dict) -> dict:
    return {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [rest]}


def test_import_is_found_at_system_level_with_or_without_dollar() -> None:
    """``rest.operation`` named ``import`` (or ``$import``) declares the operation."""
    for name in ("import", "$import"):
        caps = ServerCapabilities.from_capability_statement(
            _statement({"mode": "server", "operation": [{"name": name, "definition": "x"}]})
        )
        assert caps.supports_operation("import") and caps.supports_operation("$import")


def test_import_is_found_on_a_resource_type() -> None:
    """An ``operation`` listed under one ``rest.resource`` counts too."""
    caps = ServerCapabilities.from_capability_statement(
        _statement(
            {
                "mode": "server",
                "resource": [{"type": "Observation", "operation": [{"name": "import"}]}],
            }
        )
    )
    assert caps.supports_operation("import")
    assert caps.resource("Observation").operations == frozenset({"import"})


def test_no_import_without_the_operation() -> None:
    """Other operations (``$export``) or none at all: ``$import`` is not supported."""
    caps = ServerCapabilities.from_capability_statement(
        _statement({"mode": "server", "operation": [{"name": "export"}], "resource": []})
    )
    assert not caps.supports_operation("import")
    assert not ServerCapabilities.from_capability_statement(_statement({})).supports_operation(
        "import"
    )
