"""The fhir-alliance sync service (Flask API, store + outbox, worker); installed under the import
name ``fhir_alliance_service``, never as a top-level ``service`` module."""
