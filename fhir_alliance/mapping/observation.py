"""Alliance records ⇄ FHIR Observation (R4 4.0.1 and R5 5.0.0), pure and reversible.

An instrument administration becomes one panel Observation whose ``hasMember`` points at the
total, the subscales and the items; a dimension rating, a rupture and a repair become one
Observation each; automated measures also get a Provenance (the tool as a Device agent). Every
resource carries a business identifier derived from the record id (``{id}``, ``{id}#total``,
``{id}#subscale-bond``, ``{id}#item-3``) and a resource id derived from that identifier
(:func:`fhir_alliance.mapping._ids.resource_id`), so a client can ``PUT`` idempotently.
R4 resources claim our profiles in ``meta.profile``; R5 resources carry none (our profiles are
published for R4 only) but are otherwise the same. See ``docs/observations.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any, Final, NamedTuple

from fhir_alliance import terminology as t
from fhir_alliance.consent.gate import normal_label
from fhir_alliance.errors import InputError, Issue, MappingError
from fhir_alliance.instruments.catalog import INSTRUMENTS, Instrument, InstrumentCode, instrument
from fhir_alliance.instruments.dimensions import (
    DIMENSION_DISPLAY,
    SCALES,
    Dimension,
    RatingScale,
)
from fhir_alliance.instruments.ruptures import (
    REPAIR_STRATEGY_DISPLAY,
    RUPTURE_MARKER_DISPLAY,
    RepairStrategy,
    RuptureMarker,
    RuptureType,
)
from fhir_alliance.instruments.scoring import DEFAULT_RULES, Score, ScoringRules, score
from fhir_alliance.mapping._fhir_values import (
    check_elements,
    check_version,
    digits_value,
    fhir_number,
    identifier_from_fhir,
    obj,
    opt_str,
    read_decimal,
    read_instant,
    read_list,
    ref_from_fhir,
    ref_to_fhir,
    req_str,
)
from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.observations import (
    AllianceRecord,
    AutomatedRater,
    DimensionRating,
    InstrumentAdministration,
    ItemResponse,
    ObservationStatus,
    Rater,
    RaterRole,
    RepairEvent,
    RuptureEvent,
)
from fhir_alliance.schemas.observations import (
    KINDS,
    batch_issues,
    derived_labels,
    dump_record,
    extra_label_problem,
    load_record,
)

__all__ = [
    "MAPPER",
    "ObservationMapper",
    "from_observations",
    "member_identifier",
    "to_observations",
]

# Codes of our alliance-measures CodeSystem beyond the instrument/item/score codes.
CODE_RUPTURE_EVENT: Final = "rupture-event"
CODE_REPAIR_EVENT: Final = "repair-event"
CODE_RUPTURE_TYPE: Final = "rupture-type"
CODE_RUPTURE_MARKER: Final = "rupture-marker"
CODE_TENSION: Final = "tension"
CODE_REPAIRED: Final = "repaired"
CODE_REPAIR_STRATEGY: Final = "repair-strategy"
CODE_RESOLUTION: Final = "resolution"
CODE_PRORATED: Final = "prorated"

_SCORE_UNIT: Final = {"unit": "{score}", "system": t.UCUM, "code": "{score}"}

#: Standard codes given beside ours, only where verified against the publisher's terminology
#: (sources in docs/observations.md, "Standard codes"). None is known for WAI-SR, WAI-SR-T or SRS.
_STANDARD_SCORE_CODES: Final[Mapping[str, tuple[Mapping[str, str], ...]]] = {
    # SNOMED CT International, active: |Outcome Rating Scale total score (observable entity)|.
    "ors.total": (
        {"system": t.SNOMED, "code": "716613004", "display": "Outcome Rating Scale total score"},
    ),
}

#: Observation.referenceRange.type of a clinical cutoff: the range of totals not flagged.
_NORMAL_RANGE: Final = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/referencerange-meaning",
            "code": "normal",
            "display": "Normal Range",
        }
    ]
}


def _survey() -> list[dict[str, Any]]:
    """A fresh category list per resource: callers may mutate what we return."""
    return [{"coding": [{"system": t.OBSERVATION_CATEGORY, "code": "survey", "display": "Survey"}]}]


_ROLE_PERFORMER_TYPES: Final = {"Patient", "RelatedPerson"}


def member_identifier(record_id: Identifier, part: str) -> Identifier:
    """The business identifier of a member resource: ``{record id}#{part}`` (``#item-3``)."""
    return Identifier(system=record_id.system, value=f"{record_id.value}#{part}")


def _label(pair: tuple[str, str]) -> dict[str, str]:
    return {"system": pair[0], "code": pair[1]}


def _derived_labels(record: AllianceRecord) -> list[tuple[str, str]]:
    """The labels the mapping gives ``record`` itself (:func:`derived_labels`)."""
    return derived_labels(
        narrative=isinstance(record, RuptureEvent | RepairEvent) and record.narrative is not None,
        automated=record.rater.role is RaterRole.AUTOMATED,
    )


def _security(record: AllianceRecord) -> list[dict[str, str]]:
    """``meta.security``: the derived labels, then the record's other labels (``SUD`` another
    system added), each once."""
    derived = _derived_labels(record)
    labels = [_label(pair) for pair in derived]
    for label in record.security_labels:
        if (label.system, label.code) not in derived:
            derived.append((label.system, label.code))
            labels.append(label.to_fhir())
    return labels


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return {"coding": [out]}


def _rater_extensions(record: AllianceRecord) -> list[dict[str, Any]]:
    rater = record.rater
    exts: list[dict[str, Any]] = [
        {
            "url": t.EXT_RATER_ROLE,
            "valueCoding": {"system": t.CS_RATER_ROLES, "code": rater.role.value},
        }
    ]
    if record.counterpart is not None:
        exts.append(
            {"url": t.EXT_RATED_COUNTERPART, "valueReference": ref_to_fhir(record.counterpart)}
        )
    if rater.automated is not None:
        auto = rater.automated
        parts: list[dict[str, Any]] = [
            {"url": "tool", "valueString": auto.tool},
            {"url": "version", "valueString": auto.version},
            {"url": "clinicianReviewed", "valueBoolean": auto.clinician_reviewed},
        ]
        if auto.confidence is not None:
            parts.append({"url": "confidence", "valueDecimal": fhir_number(auto.confidence)})
        if auto.source is not None:
            parts.append({"url": "source", "valueReference": ref_to_fhir(auto.source)})
        exts.append({"url": t.EXT_AUTOMATED_RATER, "extension": parts})
    return exts


def _performer(record: AllianceRecord) -> list[dict[str, Any]]:
    rater = record.rater
    if rater.role is RaterRole.CLIENT:
        return [ref_to_fhir(record.patient)]
    if rater.who is not None:
        return [ref_to_fhir(rater.who)]
    return []  # automated: the tool is the Provenance agent (performer cannot be a Device)


def _observation(
    record: AllianceRecord,
    identifier: Identifier,
    profile: str,
    code: dict[str, Any],
    version: str,
    *,
    extensions: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    meta: dict[str, Any] = {"security": _security(record)}
    if version == "4.0.1":
        meta = {"profile": [profile], **meta}
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": resource_id(identifier),
        "meta": meta,
        "extension": [*_rater_extensions(record), *extensions],
        "identifier": [identifier.to_fhir()],
        "status": record.status.value,
        "category": _survey(),
        "code": code,
        "subject": ref_to_fhir(record.patient),
    }
    if record.encounter is not None:
        resource["encounter"] = ref_to_fhir(record.encounter)
    resource["effectiveDateTime"] = record.effective.isoformat()
    performer = _performer(record)
    if performer:
        resource["performer"] = performer
    return resource


def _derived_from(resource: dict[str, Any], record: AllianceRecord) -> None:
    if record.questionnaire_response is not None:
        resource["derivedFrom"] = [ref_to_fhir(record.questionnaire_response)]


def _quantity(value: Decimal) -> dict[str, Any]:
    return {"value": fhir_number(value), **_SCORE_UNIT}


# --- domain → FHIR ----------------------------------------------------------------------------


def _score_observation(
    record: InstrumentAdministration, inst: Instrument, sc: Score, version: str
) -> dict[str, Any]:
    part = "total" if sc.key == "total" else f"subscale-{sc.key}"
    display = f"{inst.code.value.upper()} {'total' if sc.key == 'total' else sc.key} score"
    code = _coding(t.CS_ALLIANCE_MEASURES, sc.code, display)
    code["coding"] += [dict(c) for c in _STANDARD_SCORE_CODES.get(sc.code, ())]
    res = _observation(
        record, member_identifier(record.id, part), t.PROFILE_ALLIANCE_SCORE, code, version
    )
    assert sc.value is not None
    res["valueQuantity"] = _quantity(sc.value)
    if sc.flag is not None:
        res["interpretation"] = [_coding(t.OBSERVATION_INTERPRETATION, sc.flag.value)]
    if sc.prorated:
        res["method"] = _coding(
            t.CS_ALLIANCE_MEASURES, CODE_PRORATED, "Prorated from answered items"
        )
    if sc.cutoff is not None:
        res["referenceRange"] = [_cutoff_range(inst.code, sc.cutoff, inclusive=sc.cutoff_inclusive)]
    _derived_from(res, record)
    return res


#: What a total below the cutoff means, per instrument (see ``Flag``).
_BELOW_CUTOFF_MEANS: Final = {
    InstrumentCode.SRS: "flags a possible alliance problem",
    InstrumentCode.ORS: "is in the clinical range",
}


def _cutoff_range(code: InstrumentCode, cutoff: Decimal, *, inclusive: bool) -> dict[str, Any]:
    """The one reference range we emit: the clinical cutoff of a total, as the range of totals
    that are not flagged. FHIR's ``low`` is inclusive, so an inclusive cutoff (the cutoff itself
    is flagged) has no ``low`` and says so in ``text``. The scale's own bounds are no reference
    range and are never given."""
    number = fhir_number(cutoff)
    means = _BELOW_CUTOFF_MEANS[code]
    reference_range: dict[str, Any] = {"type": _NORMAL_RANGE}
    if inclusive:
        reference_range["text"] = f"above {number}; a total of {number} or below {means}"
    else:
        reference_range["low"] = _quantity(cutoff)
        reference_range["text"] = f"{number} or more; a total below {number} {means}"
    return reference_range


def _item_observation(
    record: InstrumentAdministration, inst: Instrument, response: ItemResponse, version: str
) -> dict[str, Any]:
    res = _observation(
        record,
        member_identifier(record.id, f"item-{response.number}"),
        t.PROFILE_ALLIANCE_ITEM,
        _coding(
            t.CS_ALLIANCE_MEASURES,
            inst.item_code(response.number),
            f"{inst.code.value.upper()} item {response.number}",
        ),
        version,
    )
    spec = inst.item(response.number)
    if spec is not None and spec.integral:
        res["valueInteger"] = int(response.value)
    else:
        res["valueQuantity"] = _quantity(response.value)
    _derived_from(res, record)
    return res


def _administration(
    record: InstrumentAdministration, version: str, rules: ScoringRules
) -> list[dict[str, Any]]:
    inst = instrument(record.instrument)
    issues = [
        Issue(
            path=f"responses[{i}].value",
            message=f"not an answer item {r.number} can take "
            f"({spec.minimum}..{spec.maximum}, step {spec.step})",
        )
        for i, r in enumerate(record.responses)
        if (spec := inst.item(r.number)) is not None and not spec.accepts(r.value)
    ]
    if issues:
        # A record built in code skips the schema: its total must not be written from an answer
        # no one could give, nor a Likert answer truncated to a whole number.
        raise InputError("responses off the instrument's scale", issues=issues)
    members = [
        _score_observation(record, inst, sc, version)
        for sc in score(inst.code, record.answers(), rules)
        if sc.value is not None
    ]
    members += [_item_observation(record, inst, r, version) for r in record.responses]
    panel = _observation(
        record,
        record.id,
        t.PROFILE_ALLIANCE_PANEL,
        _coding(t.CS_ALLIANCE_MEASURES, inst.code.value, inst.display),
        version,
    )
    panel["hasMember"] = [{"reference": f"Observation/{m['id']}"} for m in members]
    _derived_from(panel, record)
    return [panel, *members]


def _dimension_rating(record: DimensionRating, version: str) -> dict[str, Any]:
    spec = SCALES[record.scale]
    if not spec.accepts(record.value):
        # a record built in code skips the schema; our reader would refuse what we wrote
        message = f"not a value of scale {record.scale.value} ({spec.minimum}..{spec.maximum})"
        raise InputError("rating off its scale", issues=[Issue(path="value", message=message)])
    res = _observation(
        record,
        record.id,
        t.PROFILE_DIMENSION_RATING,
        _coding(
            t.CS_ALLIANCE_DIMENSIONS, record.dimension.value, DIMENSION_DISPLAY[record.dimension]
        ),
        version,
        extensions=[
            {
                "url": t.EXT_RATING_SCALE,
                "valueCoding": {"system": t.CS_RATING_SCALES, "code": record.scale.value},
            }
        ],
    )
    res["valueQuantity"] = _quantity(record.value)
    _derived_from(res, record)
    return res


def _component(code: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"code": _coding(t.CS_ALLIANCE_MEASURES, code), **value}


def _strategy_components(strategies: Sequence[RepairStrategy]) -> list[dict[str, Any]]:
    return [
        _component(
            CODE_REPAIR_STRATEGY,
            {
                "valueCodeableConcept": _coding(
                    t.CS_REPAIR_STRATEGIES, s.value, REPAIR_STRATEGY_DISPLAY[s]
                )
            },
        )
        for s in strategies
    ]


def _rupture(record: RuptureEvent, version: str) -> dict[str, Any]:
    res = _observation(
        record,
        record.id,
        t.PROFILE_RUPTURE,
        _coding(t.CS_ALLIANCE_MEASURES, CODE_RUPTURE_EVENT, "Alliance rupture"),
        version,
    )
    components = [
        _component(
            CODE_RUPTURE_TYPE,
            {"valueCodeableConcept": _coding(t.CS_RUPTURE_TYPES, record.rupture_type.value)},
        ),
        *(
            _component(
                CODE_RUPTURE_MARKER,
                {
                    "valueCodeableConcept": _coding(
                        t.CS_RUPTURE_MARKERS, m.value, RUPTURE_MARKER_DISPLAY[m]
                    )
                },
            )
            for m in record.markers
        ),
        _component(CODE_TENSION, {"valueInteger": record.tension}),
    ]
    if record.repaired is not None:
        components.append(_component(CODE_REPAIRED, {"valueBoolean": record.repaired}))
    components += _strategy_components(record.repair_strategies)
    if record.resolution is not None:
        components.append(_component(CODE_RESOLUTION, {"valueInteger": record.resolution}))
    if record.narrative is not None:
        res["note"] = [{"text": record.narrative}]
    _derived_from(res, record)
    res["component"] = components
    return res


def _repair(record: RepairEvent, version: str) -> dict[str, Any]:
    rupture_ref = {
        "reference": f"Observation/{resource_id(record.rupture)}",
        "type": "Observation",
        "identifier": record.rupture.to_fhir(),
    }
    res = _observation(
        record,
        record.id,
        t.PROFILE_REPAIR,
        _coding(t.CS_ALLIANCE_MEASURES, CODE_REPAIR_EVENT, "Alliance repair"),
        version,
        extensions=[{"url": t.EXT_REPAIRS_RUPTURE, "valueReference": rupture_ref}],
    )
    components = _strategy_components(record.strategies)
    if record.resolution is not None:
        components.append(_component(CODE_RESOLUTION, {"valueInteger": record.resolution}))
    if record.narrative is not None:
        res["note"] = [{"text": record.narrative}]
    _derived_from(res, record)
    res["component"] = components
    return res


def _provenance(
    record: AllianceRecord, targets: Sequence[dict[str, Any]], version: str
) -> dict[str, Any]:
    auto = record.rater.automated
    assert auto is not None
    meta: dict[str, Any] = {"security": _security(record)}
    if version == "4.0.1":
        meta = {"profile": [t.PROFILE_AUTOMATED_PROVENANCE], **meta}
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": resource_id(record.id, "#provenance"),
        "meta": meta,
        "target": [{"reference": f"Observation/{r['id']}"} for r in targets],
        # Provenance.recorded is required in R4; we use the measure's time, never the clock.
        "recorded": record.effective.isoformat(),
        "agent": [
            {
                "type": _coding(t.PROVENANCE_PARTICIPANT_TYPE, "performer"),
                "who": {
                    "type": "Device",
                    "identifier": {
                        "system": t.IDENTIFIER_SYSTEM_TOOLS,
                        "value": f"{auto.tool}@{auto.version}",
                    },
                    "display": f"{auto.tool} {auto.version}",
                },
            }
        ],
    }
    source = auto.source or record.questionnaire_response
    if source is not None:
        resource["entity"] = [{"role": "source", "what": ref_to_fhir(source)}]
    return resource


def to_observations(
    record: AllianceRecord, *, version: str = "4.0.1", rules: ScoringRules = DEFAULT_RULES
) -> list[dict[str, Any]]:
    """The FHIR resources carrying ``record`` (panel first; Provenance last if automated)."""
    check_version(version)
    if isinstance(record, InstrumentAdministration):
        resources = _administration(record, version, rules)
    elif isinstance(record, DimensionRating):
        resources = [_dimension_rating(record, version)]
    elif isinstance(record, RuptureEvent):
        resources = [_rupture(record, version)]
    elif isinstance(record, RepairEvent):
        resources = [_repair(record, version)]
    else:
        raise TypeError(f"not an alliance record: {type(record).__name__}")
    if record.rater.role is RaterRole.AUTOMATED:
        resources.append(_provenance(record, resources, version))
    return resources


# --- FHIR → domain ----------------------------------------------------------------------------

_INSTRUMENT_BY_CODE = {c.value: c for c in InstrumentCode}
_EVENT_CODES = {CODE_RUPTURE_EVENT, CODE_REPAIR_EVENT}

#: The Observation elements the reader reads, the ones it writes and recomputes (``method``,
#: ``interpretation``, ``referenceRange`` of a score), and descriptive ones that change nothing
#: (``text``, ``language``, ``issued``). Any other (``focus``, ``dataAbsentReason``,
#: ``implicitRules``, …) is refused: dropping it would change what the record says.
_OBSERVATION_ELEMENTS: Final = frozenset(
    {
        "resourceType",
        "id",
        "meta",
        "text",
        "language",
        "extension",
        "identifier",
        "status",
        "category",
        "code",
        "subject",
        "encounter",
        "effectiveDateTime",
        "issued",
        "performer",
        "valueInteger",
        "valueQuantity",
        "interpretation",
        "method",
        "referenceRange",
        "hasMember",
        "derivedFrom",
        "component",
        "note",
    }
)
_COMPONENT_ELEMENTS: Final = frozenset(
    {"id", "extension", "code", "valueCodeableConcept", "valueInteger", "valueBoolean"}
)
#: Quantity without ``comparator``: ``< 8.7`` is no answer of 8.7.
_QUANTITY_ELEMENTS: Final = frozenset({"id", "extension", "value", "unit", "system", "code"})


def _primary_code(resource: Mapping[str, Any], path: str) -> tuple[str, str]:
    """The first coding of ``code`` from one of our CodeSystems: (system, code)."""
    code = obj(resource.get("code"), f"{path}.code")
    codings = read_list(code.get("coding"), f"{path}.code.coding", required=True)
    ours = (t.CS_ALLIANCE_MEASURES, t.CS_ALLIANCE_DIMENSIONS)
    for i, raw in enumerate(codings):
        coding = obj(raw, f"{path}.code.coding[{i}]")
        if coding.get("system") in ours:
            return str(coding["system"]), req_str(
                coding.get("code"), f"{path}.code.coding[{i}].code"
            )
    raise MappingError("no coding from the alliance CodeSystems", element=f"{path}.code.coding")


def _extension(
    resource: Mapping[str, Any], url: str, path: str
) -> tuple[Mapping[str, Any], str] | None:
    for i, raw in enumerate(read_list(resource.get("extension"), f"{path}.extension")):
        ext = obj(raw, f"{path}.extension[{i}]")
        if ext.get("url") == url:
            return ext, f"{path}.extension[{i}]"
    return None


def _coding_value(value: object, path: str, system: str) -> str:
    coding = obj(value, path)
    if coding.get("system") != system:
        raise MappingError(f"expected a code from {system}", element=f"{path}.system")
    return req_str(coding.get("code"), f"{path}.code")


def _enum(enum_type: Any, code: str, path: str) -> Any:
    try:
        return enum_type(code)
    except ValueError:
        raise MappingError("code not in the expected code system", element=path) from None


def _rater(resource: Mapping[str, Any], path: str, patient: Ref) -> Rater:
    found = _extension(resource, t.EXT_RATER_ROLE, path)
    performers = read_list(resource.get("performer"), f"{path}.performer")
    if found is None:
        # A foreign Observation without our extension: a client-reported one is the only kind we
        # can recognise (performer = the patient or a related person).
        if len(performers) == 1:
            perf = ref_from_fhir(performers[0], f"{path}.performer[0]")
            kind = perf.type or (perf.reference or "").partition("/")[0]
            if kind in _ROLE_PERFORMER_TYPES or perf == patient:
                return Rater(role=RaterRole.CLIENT)
        raise MappingError(
            "cannot tell the rater's perspective (no rater-role extension)",
            element=f"{path}.extension",
        )
    ext, ext_path = found
    role = _enum(
        RaterRole,
        _coding_value(ext.get("valueCoding"), f"{ext_path}.valueCoding", t.CS_RATER_ROLES),
        f"{ext_path}.valueCoding.code",
    )
    if role in (RaterRole.THERAPIST, RaterRole.OBSERVER):
        if len(performers) != 1:
            raise MappingError("expected exactly one performer", element=f"{path}.performer")
        return Rater(role=role, who=ref_from_fhir(performers[0], f"{path}.performer[0]"))
    if role is RaterRole.CLIENT:
        return Rater(role=role)
    auto_ext = _extension(resource, t.EXT_AUTOMATED_RATER, path)
    if auto_ext is None:
        raise MappingError("automated rater without its details", element=f"{path}.extension")
    return Rater(role=role, automated=_automated(*auto_ext))


def _automated(ext: Mapping[str, Any], path: str) -> AutomatedRater:
    parts: dict[str, tuple[Mapping[str, Any], str]] = {}
    for i, raw in enumerate(read_list(ext.get("extension"), f"{path}.extension", required=True)):
        part = obj(raw, f"{path}.extension[{i}]")
        parts[str(part.get("url"))] = (part, f"{path}.extension[{i}]")

    def need(url: str) -> tuple[Mapping[str, Any], str]:
        if url not in parts:
            raise MappingError(f"missing {url}", element=f"{path}.extension")
        return parts[url]

    tool, tool_path = need("tool")
    version, version_path = need("version")
    reviewed, reviewed_path = need("clinicianReviewed")
    if not isinstance(reviewed.get("valueBoolean"), bool):
        raise MappingError("expected valueBoolean", element=f"{reviewed_path}.valueBoolean")
    confidence = None
    if "confidence" in parts:
        conf, conf_path = parts["confidence"]
        confidence = read_decimal(conf.get("valueDecimal"), f"{conf_path}.valueDecimal")
    source = None
    if "source" in parts:
        src, src_path = parts["source"]
        source = ref_from_fhir(src.get("valueReference"), f"{src_path}.valueReference")
    return AutomatedRater(
        tool=req_str(tool.get("valueString"), f"{tool_path}.valueString"),
        version=req_str(version.get("valueString"), f"{version_path}.valueString"),
        clinician_reviewed=bool(reviewed["valueBoolean"]),
        confidence=confidence,
        source=source,
    )


def read_labels(resource: Mapping[str, Any], path: str) -> list[Coding]:
    """``meta.security``, each label's system normalised (OIDs of the HL7 v3 label systems), a
    label the consent engine could not read refused at its element, as the gate would, and a
    confidentiality below the R we write (``N``) too (:func:`extra_label_problem`)."""
    meta = resource.get("meta")
    if meta is None:
        return []
    labels = []
    security = read_list(obj(meta, f"{path}.meta").get("security"), f"{path}.meta.security")
    for i, raw in enumerate(security):
        label_path = f"{path}.meta.security[{i}]"
        label = obj(raw, label_path)
        system = normal_label(req_str(label.get("system"), f"{label_path}.system"))
        code = req_str(label.get("code"), f"{label_path}.code")
        problem = extra_label_problem(system, code)
        if problem is not None:
            raise MappingError(problem, element=label_path)
        display = opt_str(label.get("display"), f"{label_path}.display")
        labels.append(Coding(system=system, code=code, display=display))
    return labels


def with_labels(record: AllianceRecord, labels: Sequence[Coding]) -> AllianceRecord:
    """``record`` keeping, once each, the ``labels`` its mapping would not derive (a ``SUD``
    another system added), so that they are written again and the gate sees them."""
    seen = set(_derived_labels(record))
    kept = []
    for label in labels:
        if (label.system, label.code) not in seen:
            seen.add((label.system, label.code))
            kept.append(label)
    return replace(record, security_labels=tuple(kept))


def _common(resource: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Fields every record reads the same way from its (main) Observation."""
    identifiers = read_list(resource.get("identifier"), f"{path}.identifier", required=True)
    status = _enum(
        ObservationStatus, req_str(resource.get("status"), f"{path}.status"), f"{path}.status"
    )
    patient = ref_from_fhir(resource.get("subject"), f"{path}.subject")
    fields: dict[str, Any] = {
        "id": identifier_from_fhir(identifiers[0], f"{path}.identifier[0]"),
        "patient": patient,
        "rater": _rater(resource, path, patient),
        "effective": read_instant(resource.get("effectiveDateTime"), f"{path}.effectiveDateTime"),
        "status": status,
        "counterpart": None,
        "encounter": None,
        "questionnaire_response": None,
    }
    counterpart = _extension(resource, t.EXT_RATED_COUNTERPART, path)
    if counterpart is not None:
        ext, ext_path = counterpart
        fields["counterpart"] = ref_from_fhir(
            ext.get("valueReference"), f"{ext_path}.valueReference"
        )
    if resource.get("encounter") is not None:
        fields["encounter"] = ref_from_fhir(resource["encounter"], f"{path}.encounter")
    derived = read_list(resource.get("derivedFrom"), f"{path}.derivedFrom")
    if derived:
        fields["questionnaire_response"] = ref_from_fhir(derived[0], f"{path}.derivedFrom[0]")
    return fields


def _value_number(resource: Mapping[str, Any], path: str) -> Decimal:
    if "valueInteger" in resource:
        return read_decimal(resource["valueInteger"], f"{path}.valueInteger")
    if "valueQuantity" in resource:
        quantity = obj(resource["valueQuantity"], f"{path}.valueQuantity")
        check_elements(quantity, _QUANTITY_ELEMENTS, f"{path}.valueQuantity")
        return read_decimal(quantity.get("value"), f"{path}.valueQuantity.value")
    raise MappingError("expected valueInteger or valueQuantity", element=f"{path}.value[x]")


def _panel_from_fhir(
    resource: Mapping[str, Any],
    path: str,
    code: InstrumentCode,
    by_ref: Mapping[str, tuple[int, Mapping[str, Any]]],
    consumed: set[int],
    labels: list[Coding],
) -> InstrumentAdministration:
    """The administration ``resource`` is the panel of; its members' labels join ``labels``."""
    inst = INSTRUMENTS[code]
    responses: dict[int, Decimal] = {}
    for i, raw in enumerate(
        read_list(resource.get("hasMember"), f"{path}.hasMember", required=True)
    ):
        member_path = f"{path}.hasMember[{i}]"
        reference = req_str(obj(raw, member_path).get("reference"), f"{member_path}.reference")
        if reference not in by_ref:
            raise MappingError("member Observation not among the resources", element=member_path)
        index, member = by_ref[reference]
        consumed.add(index)
        mpath = f"Bundle.entry[{index}].resource"
        labels += read_labels(member, mpath)
        system, member_code = _primary_code(member, mpath)
        prefix, _, suffix = member_code.partition(".")
        if system != t.CS_ALLIANCE_MEASURES or prefix != code.value or not suffix:
            raise MappingError(
                "member code does not belong to the panel's instrument", element=f"{mpath}.code"
            )
        if suffix.isascii() and suffix.isdigit():
            number = digits_value(suffix)
            spec = None if number is None else inst.item(number)
            if number is None or spec is None:
                raise MappingError("unknown item of the instrument", element=f"{mpath}.code")
            value = _value_number(member, mpath)
            if not spec.accepts(value):
                raise MappingError(
                    "item value outside the item's answer range", element=f"{mpath}.value[x]"
                )
            if number in responses:
                raise MappingError("item appears twice", element=f"{mpath}.code")
            responses[number] = value
        elif suffix != "total" and suffix not in {s.key for s in inst.subscales}:
            raise MappingError("unknown score of the instrument", element=f"{mpath}.code")
    if not responses:
        raise MappingError("a panel without item Observations", element=f"{path}.hasMember")
    fields = _common(resource, path)
    return InstrumentAdministration(
        instrument=code,
        responses=tuple(ItemResponse(n, v) for n, v in sorted(responses.items())),
        **fields,
    )


def _components(resource: Mapping[str, Any], path: str) -> list[tuple[str, Mapping[str, Any], str]]:
    out = []
    for i, raw in enumerate(read_list(resource.get("component"), f"{path}.component")):
        cpath = f"{path}.component[{i}]"
        comp = obj(raw, cpath)
        check_elements(comp, _COMPONENT_ELEMENTS, cpath)
        codings = read_list(
            obj(comp.get("code"), f"{cpath}.code").get("coding"),
            f"{cpath}.code.coding",
            required=True,
        )
        code = _coding_value(codings[0], f"{cpath}.code.coding[0]", t.CS_ALLIANCE_MEASURES)
        out.append((code, comp, cpath))
    return out


def _one_to_five(comp: Mapping[str, Any], cpath: str) -> int:
    value = comp.get("valueInteger")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise MappingError("expected valueInteger 1..5", element=f"{cpath}.valueInteger")
    return value


def _narrative(resource: Mapping[str, Any], path: str) -> str | None:
    notes = read_list(resource.get("note"), f"{path}.note")
    if not notes:
        return None
    if len(notes) > 1:
        raise MappingError("more than one note", element=f"{path}.note")
    return req_str(obj(notes[0], f"{path}.note[0]").get("text"), f"{path}.note[0].text")


def _rupture_from_fhir(resource: Mapping[str, Any], path: str) -> RuptureEvent:
    rupture_type: RuptureType | None = None
    tension: int | None = None
    markers: list[RuptureMarker] = []
    strategies: list[RepairStrategy] = []
    repaired: bool | None = None
    resolution: int | None = None
    for code, comp, cpath in _components(resource, path):
        vpath = f"{cpath}.valueCodeableConcept"
        if code == CODE_RUPTURE_TYPE:
            concept = obj(comp.get("valueCodeableConcept"), vpath)
            coding = read_list(concept.get("coding"), f"{vpath}.coding", required=True)[0]
            rupture_type = _enum(
                RuptureType, _coding_value(coding, f"{vpath}.coding[0]", t.CS_RUPTURE_TYPES), vpath
            )
        elif code == CODE_RUPTURE_MARKER:
            concept = obj(comp.get("valueCodeableConcept"), vpath)
            coding = read_list(concept.get("coding"), f"{vpath}.coding", required=True)[0]
            markers.append(
                _enum(
                    RuptureMarker,
                    _coding_value(coding, f"{vpath}.coding[0]", t.CS_RUPTURE_MARKERS),
                    vpath,
                )
            )
        elif code == CODE_REPAIR_STRATEGY:
            strategies.append(_strategy(comp, vpath))
        elif code == CODE_TENSION:
            tension = _one_to_five(comp, cpath)
        elif code == CODE_RESOLUTION:
            resolution = _one_to_five(comp, cpath)
        elif code == CODE_REPAIRED:
            if not isinstance(comp.get("valueBoolean"), bool):
                raise MappingError("expected valueBoolean", element=f"{cpath}.valueBoolean")
            repaired = bool(comp["valueBoolean"])
        else:
            raise MappingError("unknown rupture component", element=f"{cpath}.code")
    if rupture_type is None or tension is None:
        raise MappingError(
            "a rupture needs its type and tension components", element=f"{path}.component"
        )
    return RuptureEvent(
        rupture_type=rupture_type,
        tension=tension,
        markers=tuple(markers),
        repaired=repaired,
        repair_strategies=tuple(strategies),
        resolution=resolution,
        narrative=_narrative(resource, path),
        **_common(resource, path),
    )


def _strategy(comp: Mapping[str, Any], vpath: str) -> RepairStrategy:
    concept = obj(comp.get("valueCodeableConcept"), vpath)
    coding = read_list(concept.get("coding"), f"{vpath}.coding", required=True)[0]
    code = _coding_value(coding, f"{vpath}.coding[0]", t.CS_REPAIR_STRATEGIES)
    strategy: RepairStrategy = _enum(RepairStrategy, code, vpath)
    return strategy


def _repair_from_fhir(resource: Mapping[str, Any], path: str) -> RepairEvent:
    found = _extension(resource, t.EXT_REPAIRS_RUPTURE, path)
    if found is None:
        raise MappingError("a repair must name its rupture", element=f"{path}.extension")
    ext, ext_path = found
    target = obj(ext.get("valueReference"), f"{ext_path}.valueReference")
    rupture = identifier_from_fhir(
        target.get("identifier"), f"{ext_path}.valueReference.identifier"
    )
    strategies: list[RepairStrategy] = []
    resolution: int | None = None
    for code, comp, cpath in _components(resource, path):
        if code == CODE_REPAIR_STRATEGY:
            strategies.append(_strategy(comp, f"{cpath}.valueCodeableConcept"))
        elif code == CODE_RESOLUTION:
            resolution = _one_to_five(comp, cpath)
        else:
            raise MappingError("unknown repair component", element=f"{cpath}.code")
    if not strategies:
        raise MappingError("a repair needs at least one strategy", element=f"{path}.component")
    return RepairEvent(
        rupture=rupture,
        strategies=tuple(strategies),
        resolution=resolution,
        narrative=_narrative(resource, path),
        **_common(resource, path),
    )


def _rating_from_fhir(resource: Mapping[str, Any], path: str, code: str) -> DimensionRating:
    dimension = _enum(Dimension, code, f"{path}.code")
    found = _extension(resource, t.EXT_RATING_SCALE, path)
    if found is None:
        raise MappingError("a rating must declare its scale", element=f"{path}.extension")
    ext, ext_path = found
    scale: RatingScale = _enum(
        RatingScale,
        _coding_value(ext.get("valueCoding"), f"{ext_path}.valueCoding", t.CS_RATING_SCALES),
        f"{ext_path}.valueCoding.code",
    )
    value = _value_number(resource, path)
    if not SCALES[scale].accepts(value):
        raise MappingError("value not on the declared scale", element=f"{path}.value[x]")
    return DimensionRating(dimension=dimension, scale=scale, value=value, **_common(resource, path))


def from_observations(resources: Sequence[Mapping[str, Any]]) -> list[AllianceRecord]:
    """Read records back from Observations (and Provenances, which carry nothing extra).

    Element paths in errors are ``Bundle.entry[i].resource…`` with ``i`` the index in ``resources``.
    """
    by_ref: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for index, raw in enumerate(resources):
        resource = obj(raw, f"Bundle.entry[{index}].resource")
        if resource.get("resourceType") == "Observation" and isinstance(resource.get("id"), str):
            by_ref[f"Observation/{resource['id']}"] = (index, resource)
    records: list[tuple[int, AllianceRecord]] = []
    consumed: set[int] = set()
    members: list[int] = []
    for index, raw in enumerate(resources):
        resource = obj(raw, f"Bundle.entry[{index}].resource")
        path = f"Bundle.entry[{index}].resource"
        kind = resource.get("resourceType")
        if kind in ("Provenance", "QuestionnaireResponse"):
            continue  # Provenance adds nothing; QuestionnaireResponses are extracted by MAPPER
        if kind != "Observation":
            raise MappingError(
                "expected an Observation or Provenance", element=f"{path}.resourceType"
            )
        check_elements(resource, _OBSERVATION_ELEMENTS, path)
        system, code = _primary_code(resource, path)
        labels = read_labels(resource, path)
        record: AllianceRecord
        if system == t.CS_ALLIANCE_DIMENSIONS:
            record = _rating_from_fhir(resource, path, code)
        elif code in _INSTRUMENT_BY_CODE:
            instrument_code = _INSTRUMENT_BY_CODE[code]
            record = _panel_from_fhir(resource, path, instrument_code, by_ref, consumed, labels)
        elif code == CODE_RUPTURE_EVENT:
            record = _rupture_from_fhir(resource, path)
        elif code == CODE_REPAIR_EVENT:
            record = _repair_from_fhir(resource, path)
        elif code.partition(".")[0] in _INSTRUMENT_BY_CODE:
            members.append(index)
            continue
        else:
            raise MappingError("code not known to the alliance mapping", element=f"{path}.code")
        records.append((index, with_labels(record, labels)))
    orphans = [i for i in members if i not in consumed]
    if orphans:
        raise MappingError(
            "a score or item Observation without its panel",
            element=f"Bundle.entry[{orphans[0]}].resource",
        )
    return [record for _, record in records]


class BatchKey(NamedTuple):
    """What the rules across a batch read of one record: ``map`` holds these, not the records,
    while it streams a large input (:meth:`ObservationMapper.check_batch_keys`)."""

    id: Identifier
    is_rupture: bool
    rupture: Identifier | None  # the rupture a repair names; None for any other record


class ObservationMapper:
    """The :class:`~fhir_alliance.mapping.registry.RecordMapper` for alliance observations."""

    kinds = KINDS
    resource_types = frozenset({"Observation", "Provenance", "QuestionnaireResponse"})

    def load(self, data: Mapping[str, Any]) -> AllianceRecord:
        return load_record(data)

    def dump(self, record: AllianceRecord) -> dict[str, Any]:
        return dump_record(record)

    def to_fhir(self, record: AllianceRecord, *, version: str = "4.0.1") -> list[dict[str, Any]]:
        return to_observations(record, version=version)

    def check_batch(
        self,
        labelled: Sequence[tuple[str, AllianceRecord]],
        *,
        known_ruptures: Sequence[Identifier] = (),
    ) -> list[Issue]:
        """Rules across records of one batch (see :func:`~fhir_alliance.schemas.observations.batch_issues`)."""
        return batch_issues(labelled, known_ruptures=known_ruptures)

    def batch_key(self, record: AllianceRecord) -> BatchKey:
        """The little of ``record`` that :meth:`check_batch_keys` needs."""
        return BatchKey(
            id=record.id,
            is_rupture=isinstance(record, RuptureEvent),
            rupture=record.rupture if isinstance(record, RepairEvent) else None,
        )

    def check_batch_keys(
        self,
        labelled: Sequence[tuple[str, BatchKey]],
        *,
        known_ruptures: Sequence[Identifier] = (),
    ) -> list[Issue]:
        """:meth:`check_batch` over :meth:`batch_key` of each record: the same issues, same order."""
        ruptures = {key.id for _, key in labelled if key.is_rupture} | set(known_ruptures)
        id_counts = Counter(key.id for _, key in labelled)
        issues = [
            Issue(path=f"{label}.rupture", message="names a rupture not in the batch nor known")
            for label, key in labelled
            if key.rupture is not None and key.rupture not in ruptures
        ]
        issues += [
            Issue(path=f"{label}.id", message="the same record id appears twice")
            for label, key in labelled
            if id_counts[key.id] > 1
        ]
        return issues

    def from_fhir(self, resources: Sequence[Mapping[str, Any]]) -> list[AllianceRecord]:
        from fhir_alliance.mapping.questionnaire import records_from_questionnaire_response

        records: list[AllianceRecord] = []
        for index, resource in enumerate(resources):
            if (
                isinstance(resource, Mapping)
                and resource.get("resourceType") == "QuestionnaireResponse"
            ):
                records += records_from_questionnaire_response(
                    resource, path=f"Bundle.entry[{index}].resource"
                )
        return records + from_observations(resources)


MAPPER = ObservationMapper()
