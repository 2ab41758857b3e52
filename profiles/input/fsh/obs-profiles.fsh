// Profiles of alliance observations (R4). See docs/observations.md for the mapping that fills them.

RuleSet: AllianceSecurityLabels
* meta.security ^slicing.discriminator.type = #pattern
* meta.security ^slicing.discriminator.path = "$this"
* meta.security ^slicing.rules = #open
* meta.security contains restricted 1..1 and behavioralHealth 1..1
* meta.security[restricted] = $V3Confidentiality#R
* meta.security[behavioralHealth] = $V3ActCode#BH

RuleSet: AllianceObservationBase
* insert AllianceSecurityLabels
* extension contains
    RaterRole named raterRole 1..1 and
    RatedCounterpart named ratedCounterpart 0..1 and
    AutomatedRater named automatedRater 0..1
// Medplum's validator matches extension slices on the slice's own url element: unroll it. Not for
// the complex automated-rater extension: Medplum would then apply its sub-extension slices to every
// extension of the resource (presence of automated-rater is checked by alliance-rater-1 instead).
* extension[raterRole].url = "https://fhir-alliance.org/fhir/StructureDefinition/rater-role" (exactly)
* extension[ratedCounterpart].url = "https://fhir-alliance.org/fhir/StructureDefinition/rated-counterpart" (exactly)
* identifier 1..*
* status from AllianceObservationStatus (required)
* category ^slicing.discriminator.type = #pattern
* category ^slicing.discriminator.path = "$this"
* category ^slicing.rules = #open
* category contains survey 1..1
* category[survey] = $ObsCat#survey
* subject 1..1
* subject only Reference(Patient)
* effective[x] 1..1
* effective[x] only dateTime
* performer only Reference(Practitioner or PractitionerRole or Patient or RelatedPerson)
* derivedFrom only Reference(QuestionnaireResponse or Observation)
* obeys alliance-rater-1

Invariant: alliance-rater-1
Description: "An automated measure carries the automated-rater details; other measures do not."
Expression: "(extension.where(url = 'https://fhir-alliance.org/fhir/StructureDefinition/rater-role').value.code = 'automated') = extension.where(url = 'https://fhir-alliance.org/fhir/StructureDefinition/automated-rater').exists()"
Severity: #error

Profile: AlliancePanel
Parent: Observation
Id: alliance-panel
Title: "Alliance instrument panel"
Description: "One administration of an alliance instrument (WAI-SR, WAI-SR-T, SRS, ORS): hasMember points at its scores and items."
* ^status = #draft
* insert AllianceObservationBase
* code from AllianceInstruments (required)
* hasMember 1..*
* hasMember only Reference(Observation)
* value[x] 0..0
* dataAbsentReason 0..0
* component 0..0

Profile: AllianceScore
Parent: Observation
Id: alliance-score
Title: "Alliance score"
Description: "A total or subscale score of an alliance instrument, with interpretation against a cutoff where one applies."
* ^status = #draft
* insert AllianceObservationBase
* code from AllianceScores (required)
* value[x] 1..1
* value[x] only Quantity
* valueQuantity.value 1..1
* valueQuantity.system = $UCUM
* valueQuantity.code = #{score}
* hasMember 0..0
* component 0..0

Profile: AllianceItem
Parent: Observation
Id: alliance-item
Title: "Alliance item answer"
Description: "The answer to one item of an alliance instrument (code only, never the item's wording)."
* ^status = #draft
* insert AllianceObservationBase
* code from AllianceItems (required)
* value[x] 1..1
* value[x] only integer or Quantity
* hasMember 0..0
* component 0..0

Profile: AllianceDimensionRating
Parent: Observation
Id: alliance-dimension-rating
Title: "Alliance dimension rating"
Description: "A rating of one alliance dimension (trust, respect, ...) on a declared scale by a declared rater."
* ^status = #draft
* insert AllianceObservationBase
* extension contains RatingScaleExtension named ratingScale 1..1
* extension[ratingScale].url = "https://fhir-alliance.org/fhir/StructureDefinition/rating-scale" (exactly)
* code from AllianceDimensionCodes (required)
* value[x] 1..1
* value[x] only Quantity
* valueQuantity.value 1..1
* hasMember 0..0
* component 0..0

RuleSet: AllianceComponentSlicing
* component ^slicing.discriminator.type = #pattern
* component ^slicing.discriminator.path = "code"
* component ^slicing.rules = #closed

Profile: AllianceRupture
Parent: Observation
Id: alliance-rupture
Title: "Alliance rupture"
Description: "A rupture event: type, observed markers, tension, whether and how it was repaired, resolution."
* ^status = #draft
* insert AllianceObservationBase
* code = $FAMeasures#rupture-event
* value[x] 0..0
* hasMember 0..0
* component 2..*
* insert AllianceComponentSlicing
* component contains
    ruptureType 1..1 and
    marker 0..* and
    tension 1..1 and
    repaired 0..1 and
    repairStrategy 0..* and
    resolution 0..1
* component[ruptureType].code = $FAMeasures#rupture-type
* component[ruptureType].value[x] only CodeableConcept
* component[ruptureType].valueCodeableConcept from RuptureTypeCodes (required)
* component[marker].code = $FAMeasures#rupture-marker
* component[marker].value[x] only CodeableConcept
* component[marker].valueCodeableConcept from RuptureMarkerCodes (required)
* component[tension].code = $FAMeasures#tension
* component[tension].value[x] only integer
* component[tension].valueInteger ^minValueInteger = 1
* component[tension].valueInteger ^maxValueInteger = 5
* component[repaired].code = $FAMeasures#repaired
* component[repaired].value[x] only boolean
* component[repairStrategy].code = $FAMeasures#repair-strategy
* component[repairStrategy].value[x] only CodeableConcept
* component[repairStrategy].valueCodeableConcept from RepairStrategyCodes (required)
* component[resolution].code = $FAMeasures#resolution
* component[resolution].value[x] only integer
* component[resolution].valueInteger ^minValueInteger = 1
* component[resolution].valueInteger ^maxValueInteger = 5

Profile: AllianceRepair
Parent: Observation
Id: alliance-repair
Title: "Alliance repair"
Description: "A repair event: the rupture it repairs, the strategies used and the resolution reached."
* ^status = #draft
* insert AllianceObservationBase
* extension contains RepairsRupture named repairsRupture 1..1
* extension[repairsRupture].url = "https://fhir-alliance.org/fhir/StructureDefinition/repairs-rupture" (exactly)
* code = $FAMeasures#repair-event
* value[x] 0..0
* hasMember 0..0
* component 1..*
* insert AllianceComponentSlicing
* component contains repairStrategy 1..* and resolution 0..1
* component[repairStrategy].code = $FAMeasures#repair-strategy
* component[repairStrategy].value[x] only CodeableConcept
* component[repairStrategy].valueCodeableConcept from RepairStrategyCodes (required)
* component[resolution].code = $FAMeasures#resolution
* component[resolution].value[x] only integer
* component[resolution].valueInteger ^minValueInteger = 1
* component[resolution].valueInteger ^maxValueInteger = 5

Profile: AllianceAutomatedProvenance
Parent: Provenance
Id: alliance-automated-provenance
Title: "Alliance automated-measure provenance"
Description: "Provenance of an automated (AI-assisted) alliance measure: the tool as a Device agent, the analysed source as entity."
* ^status = #draft
* insert AllianceSecurityLabels
* meta.security contains aiAssisted 1..1
* meta.security[aiAssisted] = $V3ObservationValue#AIAST
* target only Reference(Observation)
* agent 1..*
* agent.who only Reference(Device)
* agent.who.identifier 1..1
* entity.role = #source
