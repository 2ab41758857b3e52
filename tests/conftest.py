"""Shared fixtures. The FHIR test-server fixtures live in tests/fhir_server/plugin.py."""

pytest_plugins = ["tests.fhir_server.plugin"]
