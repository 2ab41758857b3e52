// Terminology of session notes. Codes must equal fhir_alliance.model.notes (NoteCategory,
// DraftingInput); tests/notes/test_profiles.py compares them with the built CodeSystems.

CodeSystem: SessionNoteContent
Id: session-note-content
Title: "Session note content"
Description: "What a session note holds, as the therapist marked it: a progress note for the record, or psychotherapy-note content kept apart (45 CFR 164.501)."
* ^status = #draft
* ^caseSensitive = true
* ^content = #complete
* #progress-note "Progress note" "Content for the clinical record: what happened in the session, assessment and plan."
* #psychotherapy-note "Psychotherapy note" "Process notes, hypotheses and session narrative kept apart from the record; labelled PSYTHPN."

ValueSet: SessionNoteContentCodes
Id: session-note-content
Title: "Session note content codes"
Description: "All codes of the session-note-content CodeSystem."
* ^status = #draft
* include codes from system SessionNoteContent

CodeSystem: NoteDraftingInputs
Id: note-drafting-inputs
Title: "Note drafting inputs"
Description: "What an AI tool took as input to draft a session note."
* ^status = #draft
* ^caseSensitive = true
* ^content = #complete
* #recording "Session recording" "An audio or video recording of the session."
* #transcript "Session transcript" "A transcript of the session."
* #dictation "Therapist dictation" "The therapist's own dictated account of the session."

ValueSet: NoteDraftingInputCodes
Id: note-drafting-inputs
Title: "Note drafting input codes"
Description: "All codes of the note-drafting-inputs CodeSystem."
* ^status = #draft
* include codes from system NoteDraftingInputs
