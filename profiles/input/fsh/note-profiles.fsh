// Profiles of session notes (R4). See docs/notes.md for the mapping that fills them.

Profile: SessionNote
Parent: DocumentReference
Id: session-note
Title: "Session note"
Description: "A therapist's note of one session (LOINC 34904-3), possibly drafted by AI and labelled so; preliminary until signed."
* ^status = #draft
* insert AllianceSecurityLabels
* extension contains
    NoteAiDrafting named aiDrafting 0..1 and
    NoteAiLabelRemoval named aiLabelRemoval 0..1 and
    NoteSignedAt named signedAt 0..1
* extension[signedAt].url = "https://fhir-alliance.org/fhir/StructureDefinition/note-signed-at" (exactly)
* identifier 1..*
* docStatus 1..1
* type 1..1
* type.coding ^slicing.discriminator.type = #pattern
* type.coding ^slicing.discriminator.path = "$this"
* type.coding ^slicing.rules = #open
* type.coding contains loinc 1..1 and content 1..1
* type.coding[loinc] = $LOINC#34904-3
* type.coding[content] from SessionNoteContentCodes (required)
* type.coding[content].system 1..1
* type.coding[content].system = "https://fhir-alliance.org/fhir/CodeSystem/session-note-content" (exactly)
* category 1..*
* subject 1..1
* subject only Reference(Patient)
* date 1..1
* author 1..1
* author only Reference(Practitioner or PractitionerRole)
* authenticator only Reference(Practitioner or PractitionerRole)
* content 1..*
* content.attachment.contentType 1..1
* content.attachment.data 1..1
* content.attachment.size 1..1
* content.attachment.hash 1..1
* context 1..1
* context.encounter 1..1
* context.period 1..1
* context.period.start 1..1
* context.related only Reference(Observation)
* obeys session-note-1 and session-note-2 and session-note-3

Invariant: session-note-1
Description: "A final or amended note names the therapist who signed it (authenticator)."
Expression: "(docStatus = 'final' or docStatus = 'amended') implies authenticator.exists()"
Severity: #error

Invariant: session-note-2
Description: "The note text is Markdown or plain text."
Expression: "content.all(attachment.contentType = 'text/markdown' or attachment.contentType = 'text/plain')"
Severity: #error

Invariant: session-note-3
Description: "Psychotherapy-note content carries the PSYTHPN label."
Expression: "type.coding.where(system = 'https://fhir-alliance.org/fhir/CodeSystem/session-note-content' and code = 'psychotherapy-note').exists() implies meta.security.where(system = 'http://terminology.hl7.org/CodeSystem/v3-ActCode' and code = 'PSYTHPN').exists()"
Severity: #error

Profile: SessionNoteProvenance
Parent: Provenance
Id: session-note-provenance
Title: "Session note provenance"
Description: "Provenance of an AI-drafted session note (HL7 AI Transparency on FHIR): the AI tool as a Device author, the signing therapist as verifier, the inputs as source entities."
* ^status = #draft
* insert AllianceSecurityLabels
* target 1..1
* target only Reference(DocumentReference)
* agent 1..*
* agent.who only Reference(Device or Practitioner or PractitionerRole)
* entity.role = #source
* obeys session-note-provenance-1

Invariant: session-note-provenance-1
Description: "The AI tool is named as a Device author, by identifier."
Expression: "agent.where(type.coding.where(system = 'http://terminology.hl7.org/CodeSystem/provenance-participant-type' and code = 'author').exists() and who.type = 'Device' and who.identifier.exists()).exists()"
Severity: #error
