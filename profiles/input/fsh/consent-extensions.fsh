// Extensions of consent records: the precise lifecycle (state + append-only history), verification
// method and witness (R4 has neither), R5 elements carried in R4 (grantee, controller), the proposed
// intervention of a treatment permission, and the two R5 modifier extensions that keep provision
// trees lossless (see docs/consent.md).

Extension: ConsentState
Id: consent-state
Title: "Consent state"
Description: "The precise lifecycle state (draft, active, revoked, expired, entered-in-error); FHIR status `inactive` stands for revoked or expired."
Context: Consent
* ^status = #draft
* value[x] 1..1
* value[x] only code
* valueCode from ConsentStateCodes (required)

Extension: ConsentStatusChange
Id: consent-status-change
Title: "Consent status change"
Description: "One step of the consent's lifecycle, in time order; revoking adds a step and never erases one."
Context: Consent
* ^status = #draft
* value[x] 0..0
* extension contains
    status 1..1 and
    at 1..1 and
    by 0..1 and
    reason 0..1
* extension[status] ^short = "The state entered"
* extension[status].value[x] 1..1
* extension[status].value[x] only code
* extension[status].valueCode from ConsentStateCodes (required)
* extension[at] ^short = "When"
* extension[at].value[x] 1..1
* extension[at].value[x] only dateTime
* extension[by] ^short = "Who made the change"
* extension[by].value[x] 1..1
* extension[by].value[x] only Reference(Patient or RelatedPerson or Practitioner or PractitionerRole or Organization or Device)
* extension[reason] ^short = "Why"
* extension[reason].value[x] 1..1
* extension[reason].value[x] only Coding

Extension: ConsentVerificationMethod
Id: consent-verification-method
Title: "Consent verification method"
Description: "How the consent was obtained: verbal, written or electronic."
Context: Consent.verification
* ^status = #draft
* value[x] 1..1
* value[x] only code
* valueCode from ConsentVerificationMethodCodes (required)

Extension: ConsentWitness
Id: consent-witness
Title: "Consent witness"
Description: "Who witnessed the consent being given (R5 `verification.verifiedBy` where its targets allow)."
Context: Consent.verification
* ^status = #draft
* value[x] 1..1
* value[x] only Reference(Practitioner or PractitionerRole or RelatedPerson or Organization or Patient)

Extension: ConsentGrantee
Id: consent-grantee
Title: "Consent grantee"
Description: "Who is granted the consent (R5 `Consent.grantee`), in R4."
Context: Consent
* ^status = #draft
* value[x] 1..1
* value[x] only Reference(CareTeam or HealthcareService or Organization or Patient or Practitioner or RelatedPerson or PractitionerRole or Device)

Extension: ConsentController
Id: consent-controller
Title: "Consent controller"
Description: "The party legally responsible for the data (R5 `Consent.controller`), in R4."
Context: Consent
* ^status = #draft
* value[x] 1..1
* value[x] only Reference(HealthcareService or Organization or Patient or Practitioner)

Extension: ConsentIntervention
Id: consent-intervention
Title: "Proposed intervention"
Description: "The intervention a treatment permission accepts (decision permit) or declines (decision deny)."
Context: Consent
* ^status = #draft
* value[x] 1..1
* value[x] only CodeableConcept

Extension: ConsentPolicyAuthority
Id: consent-policy-authority
Title: "Policy authority"
Description: "The authority of a policy document (R4 `Consent.policy.authority`), on R5 `Consent.policyBasis`."
Context: Element
* ^status = #draft
* value[x] 1..1
* value[x] only uri

Extension: ConsentRootProvision
Id: consent-root-provision
Title: "Root provision (R5)"
Description: "In R5, marks the single top-level provision that states when the consent's base decision applies (R4's root provision conditions), rather than an exception to it. A reader that does not know this extension must not apply the consent."
Context: Element
* ^status = #draft
* . ^isModifier = true
* . ^isModifierReason = "Turns an exception (the opposite of Consent.decision) into the conditions under which Consent.decision applies."
* value[x] 1..1
* value[x] only boolean

Extension: ConsentProvisionType
Id: consent-provision-type
Title: "Provision type (R5)"
Description: "In R5, the effect of a nested provision that repeats its parent's effect instead of negating it (R4 `provision.type`)."
Context: Element
* ^status = #draft
* . ^isModifier = true
* . ^isModifierReason = "States the provision's effect (permit or deny), which R5 otherwise takes to be the opposite of its parent's."
* value[x] 1..1
* value[x] only code
* valueCode from $ConsentProvisionTypeVS (required)
