// Extensions of session notes: the AI tool that drafted a note, the explicit statement that drops
// the AIAST label, and (R4 only) when the authenticator signed.

Extension: NoteAiDrafting
Id: note-ai-drafting
Title: "AI drafting of a note"
Description: "The AI tool that drafted the note: name, version, the kinds of input it took, and the input resources where known. The Provenance of the note repeats it (HL7 AI Transparency on FHIR)."
Context: DocumentReference
* ^status = #draft
* value[x] 0..0
* extension contains
    tool 1..1 and
    version 1..1 and
    input 1..* and
    source 0..*
* extension[tool] ^short = "Tool name"
* extension[tool].value[x] 1..1
* extension[tool].value[x] only string
* extension[version] ^short = "Tool version"
* extension[version].value[x] 1..1
* extension[version].value[x] only string
* extension[input] ^short = "A kind of input the tool took (recording, transcript, dictation)"
* extension[input].value[x] 1..1
* extension[input].value[x] only Coding
* extension[input].valueCoding from NoteDraftingInputCodes (required)
* extension[source] ^short = "An input resource (the recording, the transcript)"
* extension[source].value[x] 1..1
* extension[source].value[x] only Reference

Extension: NoteAiLabelRemoval
Id: note-ai-label-removal
Title: "AI label removal"
Description: "The therapist's explicit statement that they rewrote the AI draft entirely, which is the only way an AI-drafted note loses its AIAST label."
Context: DocumentReference
* ^status = #draft
* value[x] 0..0
* extension contains
    by 1..1 and
    at 1..1 and
    statement 1..1
* extension[by].value[x] 1..1
* extension[by].value[x] only Reference(Practitioner or PractitionerRole)
* extension[at].value[x] 1..1
* extension[at].value[x] only dateTime
* extension[statement].value[x] 1..1
* extension[statement].value[x] only string

Extension: NoteSignedAt
Id: note-signed-at
Title: "Note signed at"
Description: "When the authenticator signed the note (R4 has no authenticator time; R5 carries it in attester.time)."
Context: DocumentReference
* ^status = #draft
* value[x] 1..1
* value[x] only dateTime
