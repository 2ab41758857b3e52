"""QuestionnaireResponse in, alliance records (and so Observations) out: SDC observation-based
extraction semantics, pure.

Only items of our structure-only Questionnaires are extracted (the instrument items, matched by
``linkId`` = item number, and the seed-dimension items, ``linkId`` = dimension code). Unanswered
items give no Observation; free-text items (the client-feedback question) are never extracted.
``effective`` = ``authored``, rater = ``author``, subject and encounter from the QR, and every
Observation is ``derivedFrom`` the QR. The record id is the QR's business identifier (a
dimension item adds ``#{dimension}``), so extraction never mints ids.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from fhir_alliance import terminology as t
from fhir_alliance.errors import MappingError
from fhir_alliance.instruments.catalog import INSTRUMENTS, InstrumentCode
from fhir_alliance.instruments.dimensions import SCALES, Dimension, RatingScale
from fhir_alliance.instruments.scoring import DEFAULT_RULES, ScoringRules
from fhir_alliance.mapping._fhir_values import (
    digits_value,
    identifier_from_fhir,
    obj,
    read_decimal,
    read_instant,
    read_list,
    ref_from_fhir,
    req_str,
)
from fhir_alliance.mapping.observation import read_labels, to_observations, with_labels
from fhir_alliance.model.common import Identifier, Ref
from fhir_alliance.model.observations import (
    AllianceRecord,
    DimensionRating,
    InstrumentAdministration,
    ItemResponse,
    ObservationStatus,
    Rater,
    RaterRole,
)

__all__ = [
    "DIMENSIONS_QUESTIONNAIRE",
    "DIMENSIONS_SCALE",
    "observations_from_questionnaire_response",
    "records_from_questionnaire_response",
]

#: Canonical of our seed-dimension Questionnaire (our own item text; answers on a 1-5 scale).
DIMENSIONS_QUESTIONNAIRE = t.canonical("Questionnaire", "alliance-dimensions")
DIMENSIONS_SCALE = RatingScale.LIKERT_1_5

_STATUS = {
    "completed": ObservationStatus.FINAL,
    "amended": ObservationStatus.AMENDED,
    "entered-in-error": ObservationStatus.ENTERED_IN_ERROR,
}
_BY_QUESTIONNAIRE = {inst.questionnaire_url: code for code, inst in INSTRUMENTS.items()}


def _walk(items: object, path: str) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    for i, raw in enumerate(read_list(items, path)):
        ipath = f"{path}[{i}]"
        item = obj(raw, ipath)
        yield req_str(item.get("linkId"), f"{ipath}.linkId"), item, ipath
        yield from _walk(item.get("item"), f"{ipath}.item")


def _answer(item: Mapping[str, Any], ipath: str) -> Decimal | None:
    answers = read_list(item.get("answer"), f"{ipath}.answer")
    if not answers:
        return None
    if len(answers) > 1:
        raise MappingError("expected one answer", element=f"{ipath}.answer")
    answer = obj(answers[0], f"{ipath}.answer[0]")
    for key in ("valueInteger", "valueDecimal"):
        if key in answer:
            return read_decimal(answer[key], f"{ipath}.answer[0].{key}")
    if "valueQuantity" in answer:
        quantity = obj(answer["valueQuantity"], f"{ipath}.answer[0].valueQuantity")
        return read_decimal(quantity.get("value"), f"{ipath}.answer[0].valueQuantity.value")
    raise MappingError("expected a numeric answer", element=f"{ipath}.answer[0]")


def _rater(qr: Mapping[str, Any], path: str, patient: Ref) -> Rater:
    if qr.get("author") is None:
        return Rater(role=RaterRole.CLIENT)
    author = ref_from_fhir(qr["author"], f"{path}.author")
    kind = author.type or (author.reference or "").partition("/")[0]
    if author == patient or kind == "Patient":
        return Rater(role=RaterRole.CLIENT)
    if kind in ("Practitioner", "PractitionerRole"):
        return Rater(role=RaterRole.THERAPIST, who=author)
    raise MappingError("author must be the patient or a practitioner", element=f"{path}.author")


def _identifier(qr: Mapping[str, Any], path: str) -> Identifier:
    raw = qr.get("identifier")
    if isinstance(raw, list):  # R5: 0..*
        if not raw:
            raise MappingError("the QR needs a business identifier", element=f"{path}.identifier")
        return identifier_from_fhir(raw[0], f"{path}.identifier[0]")
    if raw is None:
        raise MappingError("the QR needs a business identifier", element=f"{path}.identifier")
    return identifier_from_fhir(raw, f"{path}.identifier")


def records_from_questionnaire_response(
    qr: Mapping[str, Any], *, path: str = "QuestionnaireResponse"
) -> list[AllianceRecord]:
    """The records one QuestionnaireResponse of our Questionnaires carries (none if unanswered),
    each with the QR's security labels beyond those the mapping gives (a label that cannot be
    kept is refused at ``…meta.security[i]``)."""
    qr = obj(qr, path)
    if qr.get("resourceType") != "QuestionnaireResponse":
        raise MappingError("expected a QuestionnaireResponse", element=f"{path}.resourceType")
    questionnaire = req_str(qr.get("questionnaire"), f"{path}.questionnaire").partition("|")[0]
    status = _STATUS.get(str(qr.get("status")))
    if status is None:
        raise MappingError(
            "only completed or amended responses are extracted", element=f"{path}.status"
        )
    record_id = _identifier(qr, path)
    patient = ref_from_fhir(qr.get("subject"), f"{path}.subject")
    rater = _rater(qr, path, patient)
    qr_ref = Ref(
        reference=f"QuestionnaireResponse/{qr['id']}" if isinstance(qr.get("id"), str) else None,
        identifier=record_id,
        type="QuestionnaireResponse",
    )
    context: dict[str, Any] = {
        "patient": patient,
        "rater": rater,
        "effective": read_instant(qr.get("authored"), f"{path}.authored"),
        "encounter": ref_from_fhir(qr["encounter"], f"{path}.encounter")
        if qr.get("encounter") is not None
        else None,
        "counterpart": None,
        "questionnaire_response": qr_ref,
        "status": status,
    }
    for i, raw in enumerate(read_list(qr.get("extension"), f"{path}.extension")):
        ext = obj(raw, f"{path}.extension[{i}]")
        if ext.get("url") == t.EXT_RATED_COUNTERPART:
            context["counterpart"] = ref_from_fhir(
                ext.get("valueReference"), f"{path}.extension[{i}].valueReference"
            )
    # The QR's labels (SUD the system that took it in added) go on every record extracted, so
    # that every Observation carries them again; those the mapping gives anyway are dropped.
    labels = read_labels(qr, path)
    if questionnaire == DIMENSIONS_QUESTIONNAIRE:
        records = _dimension_records(qr, path, record_id, context)
    else:
        code = _BY_QUESTIONNAIRE.get(questionnaire)
        if code is None:
            raise MappingError(
                "not one of the alliance Questionnaires", element=f"{path}.questionnaire"
            )
        records = _administration_records(qr, path, code, record_id, context)
    return [with_labels(record, labels) for record in records]


def _administration_records(
    qr: Mapping[str, Any],
    path: str,
    code: InstrumentCode,
    record_id: Identifier,
    context: dict[str, Any],
) -> list[AllianceRecord]:
    inst = INSTRUMENTS[code]
    allowed = {RaterRole.CLIENT} if inst.client_rated else {RaterRole.THERAPIST}
    if context["rater"].role not in allowed:
        raise MappingError("the author cannot rate this instrument", element=f"{path}.author")
    responses: dict[int, Decimal] = {}
    for link_id, item, ipath in _walk(qr.get("item"), f"{path}.item"):
        if not (link_id.isascii() and link_id.isdigit()):
            continue  # free text (client feedback) and groups are never extracted
        number = digits_value(link_id)
        spec = None if number is None else inst.item(number)
        if spec is None:
            raise MappingError("no such item in the instrument", element=f"{ipath}.linkId")
        value = _answer(item, ipath)
        if value is None:
            continue
        if not spec.accepts(value):
            raise MappingError("answer outside the item's range", element=f"{ipath}.answer[0]")
        if spec.number in responses:
            raise MappingError("item answered twice", element=f"{ipath}.linkId")
        responses[spec.number] = value
    if not responses:
        return []
    return [
        InstrumentAdministration(
            id=record_id,
            instrument=code,
            responses=tuple(ItemResponse(n, v) for n, v in sorted(responses.items())),
            **context,
        )
    ]


def _dimension_records(
    qr: Mapping[str, Any], path: str, record_id: Identifier, context: dict[str, Any]
) -> list[AllianceRecord]:
    records: list[AllianceRecord] = []
    known = {d.value: d for d in Dimension}
    for link_id, item, ipath in _walk(qr.get("item"), f"{path}.item"):
        dimension = known.get(link_id)
        if dimension is None:
            continue
        value = _answer(item, ipath)
        if value is None:
            continue
        if not SCALES[DIMENSIONS_SCALE].accepts(value):
            raise MappingError("answer outside the 1-5 scale", element=f"{ipath}.answer[0]")
        records.append(
            DimensionRating(
                id=Identifier(record_id.system, f"{record_id.value}#{dimension.value}"),
                dimension=dimension,
                scale=DIMENSIONS_SCALE,
                value=value,
                **context,
            )
        )
    return records


def observations_from_questionnaire_response(
    qr: Mapping[str, Any], *, version: str = "4.0.1", rules: ScoringRules = DEFAULT_RULES
) -> list[dict[str, Any]]:
    """SDC-style extraction: the Observations (panel, scores, items, …) a QR yields."""
    return [
        resource
        for record in records_from_questionnaire_response(qr)
        for resource in to_observations(record, version=version, rules=rules)
    ]
