// Structure-only Questionnaires of the alliance instruments (no item wording: licensed) and our own
// seed-dimension Questionnaire. Items with a code carry the SDC observationExtract extension.

Instance: wai-sr
InstanceOf: Questionnaire
Usage: #definition
Title: "WAI-SR structure"
Description: "Structure of the WAI-SR instrument: item codes and answer ranges only."
* url = "https://fhir-alliance.org/fhir/Questionnaire/wai-sr"
* name = "QuestionnaireWaiSr"
* status = #draft
* subjectType = #Patient
* code = $FAMeasures#wai-sr
* item[+].linkId = "1"
* item[=].text = "Item 1"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr.1
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "2"
* item[=].text = "Item 2"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr.2
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "3"
* item[=].text = "Item 3"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr.3
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "4"
* item[=].text = "Item 4"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr.4
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "5"
* item[=].text = "Item 5"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr.5
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "6"
* item[=].text = "Item 6"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr.6
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "7"
* item[=].text = "Item 7"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr.7
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "8"
* item[=].text = "Item 8"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr.8
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "9"
* item[=].text = "Item 9"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr.9
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "10"
* item[=].text = "Item 10"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr.10
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "11"
* item[=].text = "Item 11"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr.11
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "12"
* item[=].text = "Item 12"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr.12
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5

Instance: wai-sr-t
InstanceOf: Questionnaire
Usage: #definition
Title: "WAI-SR-T structure"
Description: "Structure of the WAI-SR-T instrument: item codes and answer ranges only."
* url = "https://fhir-alliance.org/fhir/Questionnaire/wai-sr-t"
* name = "QuestionnaireWaiSrT"
* status = #draft
* subjectType = #Patient
* code = $FAMeasures#wai-sr-t
* item[+].linkId = "1"
* item[=].text = "Item 1"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr-t.1
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "2"
* item[=].text = "Item 2"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr-t.2
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "3"
* item[=].text = "Item 3"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr-t.3
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "4"
* item[=].text = "Item 4"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr-t.4
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "5"
* item[=].text = "Item 5"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr-t.5
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "6"
* item[=].text = "Item 6"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr-t.6
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "7"
* item[=].text = "Item 7"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr-t.7
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "8"
* item[=].text = "Item 8"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr-t.8
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "9"
* item[=].text = "Item 9"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr-t.9
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "10"
* item[=].text = "Item 10"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr-t.10
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "11"
* item[=].text = "Item 11"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr-t.11
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "12"
* item[=].text = "Item 12"
* item[=].type = #integer
* item[=].required = false
* item[=].code = $FAMeasures#wai-sr-t.12
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5

Instance: srs
InstanceOf: Questionnaire
Usage: #definition
Title: "SRS structure"
Description: "Structure of the SRS instrument: item codes and answer ranges only."
* url = "https://fhir-alliance.org/fhir/Questionnaire/srs"
* name = "QuestionnaireSrs"
* status = #draft
* subjectType = #Patient
* code = $FAMeasures#srs
* item[+].linkId = "1"
* item[=].text = "Item 1"
* item[=].type = #decimal
* item[=].required = false
* item[=].code = $FAMeasures#srs.1
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueDecimal = 0
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueDecimal = 10
* item[+].linkId = "2"
* item[=].text = "Item 2"
* item[=].type = #decimal
* item[=].required = false
* item[=].code = $FAMeasures#srs.2
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueDecimal = 0
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueDecimal = 10
* item[+].linkId = "3"
* item[=].text = "Item 3"
* item[=].type = #decimal
* item[=].required = false
* item[=].code = $FAMeasures#srs.3
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueDecimal = 0
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueDecimal = 10
* item[+].linkId = "4"
* item[=].text = "Item 4"
* item[=].type = #decimal
* item[=].required = false
* item[=].code = $FAMeasures#srs.4
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueDecimal = 0
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueDecimal = 10

Instance: ors
InstanceOf: Questionnaire
Usage: #definition
Title: "ORS structure"
Description: "Structure of the ORS instrument: item codes and answer ranges only."
* url = "https://fhir-alliance.org/fhir/Questionnaire/ors"
* name = "QuestionnaireOrs"
* status = #draft
* subjectType = #Patient
* code = $FAMeasures#ors
* item[+].linkId = "1"
* item[=].text = "Item 1"
* item[=].type = #decimal
* item[=].required = false
* item[=].code = $FAMeasures#ors.1
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueDecimal = 0
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueDecimal = 10
* item[+].linkId = "2"
* item[=].text = "Item 2"
* item[=].type = #decimal
* item[=].required = false
* item[=].code = $FAMeasures#ors.2
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueDecimal = 0
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueDecimal = 10
* item[+].linkId = "3"
* item[=].text = "Item 3"
* item[=].type = #decimal
* item[=].required = false
* item[=].code = $FAMeasures#ors.3
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueDecimal = 0
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueDecimal = 10
* item[+].linkId = "4"
* item[=].text = "Item 4"
* item[=].type = #decimal
* item[=].required = false
* item[=].code = $FAMeasures#ors.4
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueDecimal = 0
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueDecimal = 10

Instance: alliance-dimensions
InstanceOf: Questionnaire
Usage: #definition
Title: "Alliance dimensions check-in"
Description: "Our own seed-dimension questions, each answered on a 1-5 scale, and an open feedback question that is never extracted."
* url = "https://fhir-alliance.org/fhir/Questionnaire/alliance-dimensions"
* name = "AllianceDimensionsCheckIn"
* status = #draft
* subjectType = #Patient
* item[+].linkId = "trust"
* item[=].text = "How much do you trust your therapist?"
* item[=].type = #integer
* item[=].code = $FADimensions#trust
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "respect"
* item[=].text = "How respected do you feel in sessions?"
* item[=].type = #integer
* item[=].code = $FADimensions#respect
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "emotional-safety"
* item[=].text = "How safe do you feel sharing difficult feelings here?"
* item[=].type = #integer
* item[=].code = $FADimensions#emotional-safety
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "boundaries"
* item[=].text = "How clear and comfortable are the boundaries of your sessions?"
* item[=].type = #integer
* item[=].code = $FADimensions#boundaries
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "cultural-responsiveness"
* item[=].text = "How well does your therapist understand and respect your culture and identity?"
* item[=].type = #integer
* item[=].code = $FADimensions#cultural-responsiveness
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "autonomy"
* item[=].text = "How free do you feel to choose, decline or change what you do in therapy?"
* item[=].type = #integer
* item[=].code = $FADimensions#autonomy
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "collaboration"
* item[=].text = "How much do you and your therapist work on this together?"
* item[=].type = #integer
* item[=].code = $FADimensions#collaboration
* item[=].extension[+].url = $SDC-ObservationExtract
* item[=].extension[=].valueBoolean = true
* item[=].extension[+].url = $MinValue
* item[=].extension[=].valueInteger = 1
* item[=].extension[+].url = $MaxValue
* item[=].extension[=].valueInteger = 5
* item[+].linkId = "feedback"
* item[=].text = "Is there anything I could be doing differently to support you better?"
* item[=].type = #text
