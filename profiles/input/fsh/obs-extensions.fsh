// Extensions of alliance observations: who rated (role, automated-rater details), whom the rating is
// about (rated counterpart), the declared scale of a rating, and the rupture a repair repairs.

Extension: RaterRole
Id: rater-role
Title: "Rater role"
Description: "Whose perspective the alliance measure records: client, therapist, observer or automated."
Context: Observation, QuestionnaireResponse
* ^status = #draft
* value[x] 1..1
* value[x] only Coding
* valueCoding from AllianceRaterRoleCodes (required)

Extension: RatedCounterpart
Id: rated-counterpart
Title: "Rated counterpart"
Description: "The person the rating is about (usually the therapist), distinct from the subject (the client)."
Context: Observation, QuestionnaireResponse
* ^status = #draft
* value[x] 1..1
* value[x] only Reference(Practitioner or PractitionerRole or RelatedPerson or Patient)

Extension: AutomatedRater
Id: automated-rater
Title: "Automated rater details"
Description: "The tool that produced an automated measure: name, version, confidence, whether a clinician reviewed it, and what it analysed."
Context: Observation
* ^status = #draft
* value[x] 0..0
* extension contains
    tool 1..1 and
    version 1..1 and
    clinicianReviewed 1..1 and
    confidence 0..1 and
    source 0..1
* extension[tool] ^short = "Tool name"
* extension[tool].value[x] 1..1
* extension[tool].value[x] only string
* extension[version] ^short = "Tool version"
* extension[version].value[x] 1..1
* extension[version].value[x] only string
* extension[clinicianReviewed] ^short = "A clinician reviewed the result"
* extension[clinicianReviewed].value[x] 1..1
* extension[clinicianReviewed].value[x] only boolean
* extension[confidence] ^short = "Model confidence, 0..1"
* extension[confidence].value[x] 1..1
* extension[confidence].value[x] only decimal
* extension[source] ^short = "What the tool analysed (recording, transcript)"
* extension[source].value[x] 1..1
* extension[source].value[x] only Reference

Extension: RatingScaleExtension
Id: rating-scale
Title: "Rating scale"
Description: "The declared scale a single-dimension rating was given on."
Context: Observation
* ^status = #draft
* value[x] 1..1
* value[x] only Coding
* valueCoding from AllianceRatingScaleCodes (required)

Extension: RepairsRupture
Id: repairs-rupture
Title: "Repairs rupture"
Description: "The rupture Observation that this repair event repairs (literal reference and business identifier)."
Context: Observation
* ^status = #draft
* value[x] 1..1
* value[x] only Reference(Observation)
* valueReference.identifier 1..1
