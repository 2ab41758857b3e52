// Terminology of consent records: kinds, precise lifecycle states and verification methods.
// Codes must equal fhir_alliance.model.consent (ConsentKind, ConsentStatus, VerificationMethod);
// tests/mapping/test_consent_profiles.py compares them with the built CodeSystems.

CodeSystem: ConsentKinds
Id: consent-kind
Title: "Consent kinds"
Description: "What a behavioural-health consent record is about; each kind has its own Consent profile."
* ^status = #draft
* ^caseSensitive = true
* ^content = #complete
* #sharing "Sharing" "Sharing alliance data with the EHR, the organisation or other providers, for stated purposes, with exceptions."
* #treatment "Treatment permission" "An intervention proposed and accepted (permit) or declined (deny); a refusal is a recorded answer."
* #recording "Recording and AI notes" "Session recording and AI-drafted notes: collect and use, with the AI tool named as an actor."
* #restriction "Confidentiality restriction" "Who must not receive the data."

ValueSet: ConsentKindCodes
Id: consent-kinds
Title: "Consent kinds"
Description: "All consent kinds."
* ^status = #draft
* include codes from system $FAConsentKinds

CodeSystem: ConsentStates
Id: consent-state
Title: "Consent states"
Description: "The precise lifecycle state of a consent record. FHIR R4/R5 status has one `inactive` for both revoked and expired; this keeps them apart."
* ^status = #draft
* ^caseSensitive = true
* ^content = #complete
* #draft "Draft" "Proposed or being prepared; not in force."
* #active "Active" "In force."
* #revoked "Revoked" "Withdrawn by the client or their representative; no longer in force."
* #expired "Expired" "Its period has ended; no longer in force."
* #entered-in-error "Entered in error" "Recorded by mistake; never in force."

ValueSet: ConsentStateCodes
Id: consent-states
Title: "Consent states"
Description: "All precise consent states."
* ^status = #draft
* include codes from system $FAConsentStates

CodeSystem: ConsentVerificationMethods
Id: consent-verification-method
Title: "Consent verification methods"
Description: "How a consent was obtained and confirmed."
* ^status = #draft
* ^caseSensitive = true
* ^content = #complete
* #verbal "Verbal" "Given orally (a witness is usually recorded)."
* #written "Written" "Signed on paper or a signature pad."
* #electronic "Electronic" "Given through an electronic form or portal."

ValueSet: ConsentVerificationMethodCodes
Id: consent-verification-methods
Title: "Consent verification methods"
Description: "All consent verification methods."
* ^status = #draft
* include codes from system $FAConsentVerificationMethods
