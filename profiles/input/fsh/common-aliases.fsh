// Shared aliases for every FSH file in this project. Add new ones here (one place), never
// inside a profile file, so that two files cannot disagree about a URL.

// --- External code systems -------------------------------------------------------------
Alias: $LOINC = http://loinc.org
Alias: $SCT = http://snomed.info/sct
Alias: $UCUM = http://unitsofmeasure.org
Alias: $DataAbsentReason = http://terminology.hl7.org/CodeSystem/data-absent-reason

// --- HL7 terminology (THO) -------------------------------------------------------------
Alias: $ObsCat = http://terminology.hl7.org/CodeSystem/observation-category
Alias: $ObsInterpretation = http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation
Alias: $ConsentScope = http://terminology.hl7.org/CodeSystem/consentscope
Alias: $ConsentAction = http://terminology.hl7.org/CodeSystem/consentaction
Alias: $ConsentPolicy = http://terminology.hl7.org/CodeSystem/consentpolicycodes
Alias: $V3ActReason = http://terminology.hl7.org/CodeSystem/v3-ActReason
Alias: $V3ActCode = http://terminology.hl7.org/CodeSystem/v3-ActCode
Alias: $V3Confidentiality = http://terminology.hl7.org/CodeSystem/v3-Confidentiality
Alias: $V3ObservationValue = http://terminology.hl7.org/CodeSystem/v3-ObservationValue
Alias: $V3ParticipationType = http://terminology.hl7.org/CodeSystem/v3-ParticipationType
Alias: $V3RoleCode = http://terminology.hl7.org/CodeSystem/v3-RoleCode
Alias: $V3ActConsentDirective = http://terminology.hl7.org/CodeSystem/v3-ActConsentDirective
Alias: $ProvenanceParticipantType = http://terminology.hl7.org/CodeSystem/provenance-participant-type
Alias: $ProvenanceEntityRole = http://hl7.org/fhir/provenance-entity-role
Alias: $QuestionnaireItemControl = http://hl7.org/fhir/questionnaire-item-control

// --- Value sets from core / THO --------------------------------------------------------
Alias: $SecurityLabels = http://hl7.org/fhir/ValueSet/security-labels
Alias: $ConsentScopeVS = http://hl7.org/fhir/ValueSet/consent-scope
Alias: $ConsentActionVS = http://hl7.org/fhir/ValueSet/consent-action
Alias: $ConsentCategoryVS = http://hl7.org/fhir/ValueSet/consent-category
Alias: $ObsCategoryVS = http://hl7.org/fhir/ValueSet/observation-category
Alias: $PurposeOfUseVS = http://terminology.hl7.org/ValueSet/v3-PurposeOfUse

// --- Extensions (core R4, SDC, cross-version) -----------------------------------------
Alias: $SDC-ObservationExtract = http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-observationExtract
Alias: $SDC-ObservationLinkPeriod = http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-observationLinkPeriod
Alias: $SDC-ItemWeight = http://hl7.org/fhir/StructureDefinition/itemWeight
Alias: $OrdinalValue = http://hl7.org/fhir/StructureDefinition/ordinalValue
Alias: $QuestionnaireItemControlExt = http://hl7.org/fhir/StructureDefinition/questionnaire-itemControl
Alias: $MinValue = http://hl7.org/fhir/StructureDefinition/minValue
Alias: $MaxValue = http://hl7.org/fhir/StructureDefinition/maxValue
Alias: $R5ConsentDecision = http://hl7.org/fhir/5.0/StructureDefinition/extension-Consent.decision

// --- Ours (canonical base https://fhir-alliance.org/fhir) -----------------------------
Alias: $FA = https://fhir-alliance.org/fhir
Alias: $FA-Identifier = https://fhir-alliance.org/fhir/identifier
// Alliance observations (CodeSystems of profiles/input/fsh/obs-terminology.fsh)
Alias: $FAMeasures = https://fhir-alliance.org/fhir/CodeSystem/alliance-measures
Alias: $FADimensions = https://fhir-alliance.org/fhir/CodeSystem/alliance-dimensions
Alias: $FARatingScales = https://fhir-alliance.org/fhir/CodeSystem/alliance-rating-scales
Alias: $FARaterRoles = https://fhir-alliance.org/fhir/CodeSystem/alliance-rater-roles
Alias: $FARuptureTypes = https://fhir-alliance.org/fhir/CodeSystem/rupture-types
Alias: $FARuptureMarkers = https://fhir-alliance.org/fhir/CodeSystem/rupture-markers
Alias: $FARepairStrategies = https://fhir-alliance.org/fhir/CodeSystem/repair-strategies
// Consents (CodeSystems of profiles/input/fsh/consent-terminology.fsh)
Alias: $FAConsentKinds = https://fhir-alliance.org/fhir/CodeSystem/consent-kind
Alias: $FAConsentStates = https://fhir-alliance.org/fhir/CodeSystem/consent-state
Alias: $FAConsentVerificationMethods = https://fhir-alliance.org/fhir/CodeSystem/consent-verification-method
Alias: $ConsentProvisionTypeVS = http://hl7.org/fhir/ValueSet/consent-provision-type
