// Smallest artefact that proves the toolchain builds end to end (profile + snapshot).
// Harmless to keep; remove once real profiles exist and nothing refers to it.
Profile: ToolchainCheckObservation
Parent: Observation
Id: toolchain-check-observation
Title: "Toolchain check (placeholder)"
Description: "Placeholder profile that keeps the SUSHI build non-empty. Not for use in exchanges."
* ^status = #draft
* ^experimental = true
* status = #final
* code from http://hl7.org/fhir/ValueSet/observation-codes (example)
