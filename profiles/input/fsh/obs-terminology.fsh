// Terminology of alliance observations: our CodeSystems and ValueSets (structure only: no item
// text of licensed instruments). Codes must equal fhir_alliance.instruments / model enums; a test
// (tests/mapping/test_observation_terminology.py) compares them with the built CodeSystems.

CodeSystem: AllianceMeasures
Id: alliance-measures
Title: "Alliance measures"
Description: "Codes for alliance instruments (panels), their items and scores, and rupture/repair events and components. Structure only: no item wording."
* ^status = #draft
* ^caseSensitive = true
* ^content = #complete
* ^hierarchyMeaning = #grouped-by
* #wai-sr "Working Alliance Inventory - Short Revised, client form"
  * #wai-sr.total "WAI-SR total score"
  * #wai-sr.task "WAI-SR task score"
  * #wai-sr.bond "WAI-SR bond score"
  * #wai-sr.goal "WAI-SR goal score"
  * #wai-sr.1 "WAI-SR item 1"
  * #wai-sr.2 "WAI-SR item 2"
  * #wai-sr.3 "WAI-SR item 3"
  * #wai-sr.4 "WAI-SR item 4"
  * #wai-sr.5 "WAI-SR item 5"
  * #wai-sr.6 "WAI-SR item 6"
  * #wai-sr.7 "WAI-SR item 7"
  * #wai-sr.8 "WAI-SR item 8"
  * #wai-sr.9 "WAI-SR item 9"
  * #wai-sr.10 "WAI-SR item 10"
  * #wai-sr.11 "WAI-SR item 11"
  * #wai-sr.12 "WAI-SR item 12"
* #wai-sr-t "Working Alliance Inventory - Short Revised, therapist form"
  * #wai-sr-t.total "WAI-SR-T total score"
  * #wai-sr-t.1 "WAI-SR-T item 1"
  * #wai-sr-t.2 "WAI-SR-T item 2"
  * #wai-sr-t.3 "WAI-SR-T item 3"
  * #wai-sr-t.4 "WAI-SR-T item 4"
  * #wai-sr-t.5 "WAI-SR-T item 5"
  * #wai-sr-t.6 "WAI-SR-T item 6"
  * #wai-sr-t.7 "WAI-SR-T item 7"
  * #wai-sr-t.8 "WAI-SR-T item 8"
  * #wai-sr-t.9 "WAI-SR-T item 9"
  * #wai-sr-t.10 "WAI-SR-T item 10"
  * #wai-sr-t.11 "WAI-SR-T item 11"
  * #wai-sr-t.12 "WAI-SR-T item 12"
* #srs "Session Rating Scale v3"
  * #srs.total "SRS total score"
  * #srs.1 "SRS item 1"
  * #srs.2 "SRS item 2"
  * #srs.3 "SRS item 3"
  * #srs.4 "SRS item 4"
* #ors "Outcome Rating Scale"
  * #ors.total "ORS total score"
  * #ors.1 "ORS item 1"
  * #ors.2 "ORS item 2"
  * #ors.3 "ORS item 3"
  * #ors.4 "ORS item 4"
* #rupture-event "Alliance rupture"
* #repair-event "Alliance repair"
* #rupture-type "Rupture type"
* #rupture-marker "Rupture marker"
* #tension "Tension (1-5)"
* #repaired "Repaired"
* #repair-strategy "Repair strategy"
* #resolution "Resolution (1-5)"
* #prorated "Prorated from answered items"

CodeSystem: AllianceDimensions
Id: alliance-dimensions
Title: "Alliance dimensions"
Description: "Single dimensions of the therapeutic alliance rated on a declared scale."
* ^status = #draft
* ^caseSensitive = true
* ^content = #complete
* #trust "Trust"
* #respect "Respect"
* #emotional-safety "Emotional safety"
* #boundaries "Boundaries"
* #cultural-responsiveness "Cultural responsiveness"
* #autonomy "Client autonomy"
* #collaboration "Collaboration"

CodeSystem: AllianceRatingScales
Id: alliance-rating-scales
Title: "Alliance rating scales"
Description: "Declared scales of single-dimension ratings."
* ^status = #draft
* ^caseSensitive = true
* ^content = #complete
* #likert-1-5 "Likert 1-5" "From 1 to 5 in steps of 1."
* #likert-1-7 "Likert 1-7" "From 1 to 7 in steps of 1."
* #numeric-0-10 "Numeric 0-10" "From 0 to 10 in steps of 1."
* #vas-0-10 "Visual analogue 0-10" "From 0 to 10 in steps of 0.1."

CodeSystem: AllianceRaterRoles
Id: alliance-rater-roles
Title: "Alliance rater roles"
Description: "Whose perspective an alliance measure records."
* ^status = #draft
* ^caseSensitive = true
* ^content = #complete
* #client "Client" "The client rated the alliance."
* #therapist "Therapist" "The therapist rated the alliance."
* #observer "Observer" "A third person (supervisor, researcher) rated it."
* #automated "Automated" "A software tool rated it, e.g. from a recording."

CodeSystem: RuptureTypes
Id: rupture-types
Title: "Rupture types"
Description: "Kinds of alliance rupture."
* ^status = #draft
* ^caseSensitive = true
* ^content = #complete
* #withdrawal "Withdrawal" "Moving away from the therapist or the work."
* #confrontation "Confrontation" "Moving against the therapist or the work."

CodeSystem: RuptureMarkers
Id: rupture-markers
Title: "Rupture markers"
Description: "Observed markers of an alliance rupture (names ours, after public rupture research)."
* ^status = #draft
* ^caseSensitive = true
* ^content = #complete
* #denial "Denies a feeling that is evident" "Marks a withdrawal rupture."
* #minimal-response "Minimal responses" "Marks a withdrawal rupture."
* #topic-shift "Shifts away from the topic" "Marks a withdrawal rupture."
* #deference "Defers or appeases" "Marks a withdrawal rupture."
* #content-affect-split "Content and affect do not match" "Marks a withdrawal rupture."
* #complaint-about-therapist "Complains about the therapist" "Marks a confrontation rupture."
* #complaint-about-activities "Complains about the activities of therapy" "Marks a confrontation rupture."
* #complaint-about-progress "Complains about progress" "Marks a confrontation rupture."
* #rejects-intervention "Rejects an intervention" "Marks a confrontation rupture."
* #controlling "Tries to control the session" "Marks a confrontation rupture."
* #misattunement "Misattunement" "Marks a withdrawal or confrontation rupture."
* #perceived-judgement "Feels judged" "Marks a withdrawal or confrontation rupture."

CodeSystem: RepairStrategies
Id: repair-strategies
Title: "Repair strategies"
Description: "How a therapist repairs an alliance rupture (names ours, after public rupture research)."
* ^status = #draft
* ^caseSensitive = true
* ^content = #complete
* #names-rupture "Therapist names the rupture"
* #takes-ownership "Therapist takes ownership of their part"
* #invites-feedback "Therapist invites feedback"
* #clarifies-misunderstanding "Clarifies a misunderstanding"
* #changes-task-or-goal "Changes the task or goal"
* #gives-rationale "Explains the rationale of a task"
* #validates-defensive-posture "Validates the client's defensive posture"
* #links-to-patterns "Links the rupture to wider patterns"
* #redirects "Redirects or refocuses"

ValueSet: AllianceInstruments
Id: alliance-instruments
Title: "Alliance instruments"
Description: "Panel codes of the alliance instruments."
* ^status = #draft
* $FAMeasures#wai-sr
* $FAMeasures#wai-sr-t
* $FAMeasures#srs
* $FAMeasures#ors

ValueSet: AllianceScores
Id: alliance-scores
Title: "Alliance scores"
Description: "Total and subscale score codes."
* ^status = #draft
* $FAMeasures#wai-sr.total
* $FAMeasures#wai-sr-t.total
* $FAMeasures#srs.total
* $FAMeasures#ors.total
* $FAMeasures#wai-sr.task
* $FAMeasures#wai-sr.bond
* $FAMeasures#wai-sr.goal

ValueSet: AllianceItems
Id: alliance-items
Title: "Alliance items"
Description: "Item codes of the alliance instruments."
* ^status = #draft
* $FAMeasures#wai-sr.1
* $FAMeasures#wai-sr.2
* $FAMeasures#wai-sr.3
* $FAMeasures#wai-sr.4
* $FAMeasures#wai-sr.5
* $FAMeasures#wai-sr.6
* $FAMeasures#wai-sr.7
* $FAMeasures#wai-sr.8
* $FAMeasures#wai-sr.9
* $FAMeasures#wai-sr.10
* $FAMeasures#wai-sr.11
* $FAMeasures#wai-sr.12
* $FAMeasures#wai-sr-t.1
* $FAMeasures#wai-sr-t.2
* $FAMeasures#wai-sr-t.3
* $FAMeasures#wai-sr-t.4
* $FAMeasures#wai-sr-t.5
* $FAMeasures#wai-sr-t.6
* $FAMeasures#wai-sr-t.7
* $FAMeasures#wai-sr-t.8
* $FAMeasures#wai-sr-t.9
* $FAMeasures#wai-sr-t.10
* $FAMeasures#wai-sr-t.11
* $FAMeasures#wai-sr-t.12
* $FAMeasures#srs.1
* $FAMeasures#srs.2
* $FAMeasures#srs.3
* $FAMeasures#srs.4
* $FAMeasures#ors.1
* $FAMeasures#ors.2
* $FAMeasures#ors.3
* $FAMeasures#ors.4

ValueSet: AllianceDimensionCodes
Id: alliance-dimension-codes
Title: "Alliance dimension codes"
Description: "All single alliance dimensions."
* ^status = #draft
* include codes from system $FADimensions

ValueSet: AllianceRatingScaleCodes
Id: alliance-rating-scale-codes
Title: "Alliance rating scale codes"
Description: "All declared rating scales."
* ^status = #draft
* include codes from system $FARatingScales

ValueSet: AllianceRaterRoleCodes
Id: alliance-rater-role-codes
Title: "Alliance rater role codes"
Description: "All rater roles."
* ^status = #draft
* include codes from system $FARaterRoles

ValueSet: RuptureTypeCodes
Id: rupture-type-codes
Title: "Rupture type codes"
Description: "All rupture types."
* ^status = #draft
* include codes from system $FARuptureTypes

ValueSet: RuptureMarkerCodes
Id: rupture-marker-codes
Title: "Rupture marker codes"
Description: "All rupture markers."
* ^status = #draft
* include codes from system $FARuptureMarkers

ValueSet: RepairStrategyCodes
Id: repair-strategy-codes
Title: "Repair strategy codes"
Description: "All repair strategies."
* ^status = #draft
* include codes from system $FARepairStrategies

ValueSet: AllianceObservationStatus
Id: alliance-observation-status
Title: "Alliance observation status"
Description: "Statuses an alliance Observation may have."
* ^status = #draft
* http://hl7.org/fhir/observation-status#final
* http://hl7.org/fhir/observation-status#amended
* http://hl7.org/fhir/observation-status#entered-in-error
