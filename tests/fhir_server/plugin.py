"""Pytest fixtures for the test FHIR server (being written; see tests/fhir_server/README.md)."""
