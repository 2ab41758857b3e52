"""The service's use cases: plain functions over the :class:`~fhir_alliance_service.store.interface.Store`
(no Flask), shared by the HTTP API, the CLI and the worker."""
