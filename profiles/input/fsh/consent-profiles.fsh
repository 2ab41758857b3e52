// R4 Consent profiles, one per consent kind, on a common base (see docs/consent.md). They follow IHE
// PCF where it applies: the base decision is the root provision.type; recipients are actors (IRCP).

Invariant: alliance-consent-1
Description: "Every nested provision states its type (permit or deny)."
// repeat() for any depth; the explicit levels for validators whose repeat() is incomplete (Medplum 5).
Expression: "provision.provision.repeat(provision).all(type.exists()) and provision.provision.all(type.exists()) and provision.provision.provision.all(type.exists()) and provision.provision.provision.provision.all(type.exists()) and provision.provision.provision.provision.provision.all(type.exists()) and provision.provision.provision.provision.provision.provision.all(type.exists()) and provision.provision.provision.provision.provision.provision.provision.all(type.exists()) and provision.provision.provision.provision.provision.provision.provision.provision.all(type.exists()) and provision.provision.provision.provision.provision.provision.provision.provision.provision.all(type.exists())"
Severity: #error

Invariant: alliance-consent-2
Description: "The last status change, if any, enters the consent's current state."
Expression: "extension.where(url = 'https://fhir-alliance.org/fhir/StructureDefinition/consent-status-change').empty() or extension.where(url = 'https://fhir-alliance.org/fhir/StructureDefinition/consent-status-change').last().extension.where(url = 'status').value = extension.where(url = 'https://fhir-alliance.org/fhir/StructureDefinition/consent-state').value"
Severity: #error

Profile: AllianceConsent
Parent: Consent
Id: alliance-consent
Title: "Alliance consent (base)"
Description: "What every fhir-alliance consent record has: a business identifier, its precise state and history, the patient, when, a policy basis, and a root provision carrying the base decision."
* ^status = #draft
* ^abstract = true
* obeys alliance-consent-1 and alliance-consent-2
* extension contains
    ConsentState named state 1..1 and
    ConsentStatusChange named statusChange 0..* and
    ConsentGrantee named grantee 0..* and
    ConsentController named controller 0..1 and
    ConsentIntervention named intervention 0..1
// Medplum's validator matches extension slices on the slice's own url element: unroll it (not for the
// complex status-change extension, whose sub-extension slices Medplum would apply to every extension).
* extension[state].url = "https://fhir-alliance.org/fhir/StructureDefinition/consent-state" (exactly)
* extension[grantee].url = "https://fhir-alliance.org/fhir/StructureDefinition/consent-grantee" (exactly)
* extension[controller].url = "https://fhir-alliance.org/fhir/StructureDefinition/consent-controller" (exactly)
* extension[intervention].url = "https://fhir-alliance.org/fhir/StructureDefinition/consent-intervention" (exactly)
* identifier 1..1
* identifier.system 1..1
* identifier.value 1..1
* category ^slicing.discriminator.type = #pattern
* category ^slicing.discriminator.path = "$this"
* category ^slicing.rules = #open
* category ^slicing.description = "The consent kind, as a coding of ours"
* category contains kind 1..1
* patient 1..1
* dateTime 1..1
* performer 0..1
* organization 0..1
* source[x] only Attachment or Reference(DocumentReference or Consent or Contract or QuestionnaireResponse)
* verification.extension contains
    ConsentVerificationMethod named method 1..1 and
    ConsentWitness named witness 0..1
* verification.extension[method].url = "https://fhir-alliance.org/fhir/StructureDefinition/consent-verification-method" (exactly)
* verification.extension[witness].url = "https://fhir-alliance.org/fhir/StructureDefinition/consent-witness" (exactly)
* verification.verified = true
* verification.verificationDate 1..1
* provision 1..1
* provision.type 1..1
* provision.type ^short = "Base decision (IHE PCF): permit or deny"
* provision.purpose from $PurposeOfUseVS (required)
* provision.action from $ConsentActionVS (required)

Profile: ConsentSharing
Parent: AllianceConsent
Id: consent-sharing
Title: "Consent to share alliance data"
Description: "Sharing alliance data with the EHR, the organisation or other providers, for stated purposes, with exceptions (deny one actor, deny anything labelled PSYTHPN, limit by data period, instrument or code)."
* ^status = #draft
* ^abstract = false
* scope = $ConsentScope#patient-privacy
* category[kind] = $FAConsentKinds#sharing
* extension[intervention] 0..0

Profile: ConsentRestriction
Parent: AllianceConsent
Id: consent-restriction
Title: "Confidentiality restriction"
Description: "Who must not receive the data: a deny with the actors named, or a permit with deny exceptions."
* ^status = #draft
* ^abstract = false
* scope = $ConsentScope#patient-privacy
* category[kind] = $FAConsentKinds#restriction
* extension[intervention] 0..0

Profile: ConsentRecording
Parent: AllianceConsent
Id: consent-recording
Title: "Consent to session recording and AI-drafted notes"
Description: "Collect and use session recordings; an AI tool drafting notes is named as an actor (Device)."
* ^status = #draft
* ^abstract = false
* scope = $ConsentScope#patient-privacy
* category[kind] = $FAConsentKinds#recording
* extension[intervention] 0..0
* provision.action 1..*

Profile: ConsentTreatment
Parent: AllianceConsent
Id: consent-treatment
Title: "Treatment permission"
Description: "An intervention proposed (status draft), then accepted (decision permit) or declined (decision deny); a refusal is a recorded answer."
* ^status = #draft
* ^abstract = false
* scope = $ConsentScope#treatment
* category[kind] = $FAConsentKinds#treatment
* extension[intervention] 1..1
