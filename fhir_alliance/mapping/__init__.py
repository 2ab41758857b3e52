"""Pure, reversible mappings between domain records and FHIR resources (R4 4.0.1 and R5 5.0.0)."""
