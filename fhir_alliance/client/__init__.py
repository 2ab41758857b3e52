"""FHIR REST client: transport, auth (SMART Backend Services), capabilities, paging, bundles, errors."""
