"""Session notes ⇄ FHIR DocumentReference (R4 4.0.1 and R5 5.0.0), pure and reversible, plus the
AI-drafting consent question a note raises.

A note becomes one DocumentReference (type LOINC 34904-3 Mental health Progress note, category
clinical-note, the text as an attachment with its size and SHA-1 hash) and, when an AI tool drafted
it, a Provenance naming the tool as a ``Device`` author, the signing therapist as verifier and the
inputs as entities (HL7 AI Transparency on FHIR). Labels: R and BH always, PSYTHPN on
psychotherapy-note content, AIAST on AI-drafted content unless the therapist explicitly stated they
rewrote it. A draft is ``docStatus`` preliminary; signing makes the final version of the same
resource (same id). Reading back needs only the DocumentReference: the Provenance repeats what the
DocumentReference's extensions carry. See ``docs/notes.md``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from fhir_alliance import terminology as t
from fhir_alliance.consent import ConsentDecision, ConsentEngine, DecisionOutcome
from fhir_alliance.consent.decision import DecisionRequest, RequestActor, RequestedResource
from fhir_alliance.consent.gate import normal_label
from fhir_alliance.errors import MappingError
from fhir_alliance.mapping._fhir_values import (
    check_version,
    digits_value,
    identifier_from_fhir,
    obj,
    opt_str,
    read_instant,
    read_list,
    ref_from_fhir,
    ref_to_fhir,
    req_str,
)
from fhir_alliance.mapping._ids import resource_id
from fhir_alliance.model.common import Coding, Identifier, Ref
from fhir_alliance.model.consent import ConsentKind, ConsentRecord, ConsentStatus
from fhir_alliance.model.notes import (
    AiDrafting,
    AiLabelRemoval,
    DraftingInput,
    NoteCategory,
    NoteFormat,
    NoteSection,
    NoteStatus,
    SessionNote,
)
from fhir_alliance.schemas.notes import KINDS, dump_note, load_note

__all__ = [
    "CS_DRAFTING_INPUTS",
    "CS_NOTE_CONTENT",
    "EXT_AI_DRAFTING",
    "EXT_AI_LABEL_REMOVAL",
    "EXT_SIGNED_AT",
    "MAPPER",
    "PROFILE_SESSION_NOTE",
    "PROFILE_SESSION_NOTE_PROVENANCE",
    "NoteMapper",
    "ai_disclosure_permitted",
    "ai_drafting_decision",
    "ai_drafting_request",
    "from_document_reference",
    "to_document_reference",
    "tool_device",
]

CS_NOTE_CONTENT: Final = t.canonical("CodeSystem", "session-note-content")
CS_DRAFTING_INPUTS: Final = t.canonical("CodeSystem", "note-drafting-inputs")
EXT_AI_DRAFTING: Final = t.canonical("StructureDefinition", "note-ai-drafting")
EXT_AI_LABEL_REMOVAL: Final = t.canonical("StructureDefinition", "note-ai-label-removal")
#: R4 only: when the authenticator signed (R5 has ``attester.time``).
EXT_SIGNED_AT: Final = t.canonical("StructureDefinition", "note-signed-at")
PROFILE_SESSION_NOTE: Final = t.canonical("StructureDefinition", "session-note")
PROFILE_SESSION_NOTE_PROVENANCE: Final = t.canonical(
    "StructureDefinition", "session-note-provenance"
)

#: LOINC 34904-3, the document type of every session note.
NOTE_TYPE: Final = {"system": t.LOINC, "code": "34904-3", "display": "Mental health Progress note"}
#: US Core's DocumentReference category (the US Behavioral Health Profiles use it too).
CLINICAL_NOTE_CATEGORY: Final = {
    "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
    "code": "clinical-note",
    "display": "Clinical Note",
}
#: R5 has no ``context.related``: the R4 element carried by its cross-version extension.
R4_CONTEXT_RELATED_EXTENSION: Final = (
    "http://hl7.org/fhir/4.0/StructureDefinition/extension-DocumentReference.context.related"
)
_ATTESTATION_MODE: Final = "http://hl7.org/fhir/composition-attestation-mode"

_CATEGORY_DISPLAY: Final = {
    NoteCategory.PROGRESS_NOTE: "Progress note",
    NoteCategory.PSYCHOTHERAPY_NOTE: "Psychotherapy note",
}
_DOC_STATUS: Final = {
    NoteStatus.DRAFT: "preliminary",
    NoteStatus.FINAL: "final",
    NoteStatus.AMENDED: "amended",
}
_STATUS_BY_DOC_STATUS: Final = {v: k for k, v in _DOC_STATUS.items()}


def _label(pair: tuple[str, str]) -> dict[str, str]:
    return {"system": pair[0], "code": pair[1]}


def _security(note: SessionNote) -> list[dict[str, str]]:
    labels = [_label(t.LABEL_RESTRICTED), _label(t.LABEL_BEHAVIORAL_HEALTH)]
    if note.category is NoteCategory.PSYCHOTHERAPY_NOTE:
        labels.append(_label(t.LABEL_PSYCHOTHERAPY_NOTE))
    if note.ai_labelled:
        labels.append(_label(t.LABEL_AI_ASSISTED))
    return labels


def tool_device(ai: AiDrafting) -> Ref:
    """The AI tool as a Device reference: identifier ``{tool}@{version}`` in the tools system, the
    same way consents name it as an actor and alliance Provenances name automated raters."""
    return Ref(
        identifier=Identifier(system=t.IDENTIFIER_SYSTEM_TOOLS, value=f"{ai.tool}@{ai.version}"),
        type="Device",
        display=f"{ai.tool} {ai.version}",
    )


# --- domain → FHIR ----------------------------------------------------------------------------


def _attachment(text: str, content_type: str, title: str | None = None) -> dict[str, Any]:
    data = text.encode("utf-8")
    out: dict[str, Any] = {
        "contentType": content_type,
        "data": base64.b64encode(data).decode("ascii"),
        "size": len(data),
        # FHIR Attachment.hash: base64 of the SHA-1 of the data (R4 and R5).
        "hash": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),  # noqa: S324
    }
    if title is not None:
        out["title"] = title
    return out


def _ai_extension(ai: AiDrafting) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"url": "tool", "valueString": ai.tool},
        {"url": "version", "valueString": ai.version},
    ]
    parts += [
        {"url": "input", "valueCoding": {"system": CS_DRAFTING_INPUTS, "code": i.value}}
        for i in ai.inputs
    ]
    parts += [{"url": "source", "valueReference": ref_to_fhir(s)} for s in ai.sources]
    return {"url": EXT_AI_DRAFTING, "extension": parts}


def _removal_extension(removal: AiLabelRemoval) -> dict[str, Any]:
    return {
        "url": EXT_AI_LABEL_REMOVAL,
        "extension": [
            {"url": "by", "valueReference": ref_to_fhir(removal.by)},
            {"url": "at", "valueDateTime": removal.at.isoformat()},
            {"url": "statement", "valueString": removal.statement},
        ],
    }


def to_document_reference(note: SessionNote, *, version: str = "4.0.1") -> dict[str, Any]:
    """The DocumentReference carrying ``note`` (its id from the note's identifier)."""
    check_version(version)
    r4 = version == "4.0.1"
    meta: dict[str, Any] = {"security": _security(note)}
    if r4:
        meta = {"profile": [PROFILE_SESSION_NOTE], **meta}
    extensions: list[dict[str, Any]] = []
    if note.ai_drafting is not None:
        extensions.append(_ai_extension(note.ai_drafting))
    if note.ai_label_removal is not None:
        extensions.append(_removal_extension(note.ai_label_removal))
    if r4 and note.signed_at is not None:
        extensions.append({"url": EXT_SIGNED_AT, "valueDateTime": note.signed_at.isoformat()})
    if not r4 and note.observations:
        extensions += [
            {"url": R4_CONTEXT_RELATED_EXTENSION, "valueReference": ref_to_fhir(o)}
            for o in note.observations
        ]
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": resource_id(note.id),
        "meta": meta,
    }
    if extensions:
        resource["extension"] = extensions
    resource["identifier"] = [note.id.to_fhir()]
    if note.status is NoteStatus.ENTERED_IN_ERROR:
        resource["status"] = "entered-in-error"
        resource["docStatus"] = "final" if note.signed_by is not None else "preliminary"
    else:
        resource["status"] = "current"
        resource["docStatus"] = _DOC_STATUS[note.status]
    resource["type"] = {
        "coding": [
            dict(NOTE_TYPE),
            {
                "system": CS_NOTE_CONTENT,
                "code": note.category.value,
                "display": _CATEGORY_DISPLAY[note.category],
            },
        ]
    }
    resource["category"] = [{"coding": [dict(CLINICAL_NOTE_CATEGORY)]}]
    resource["subject"] = ref_to_fhir(note.patient)
    resource["date"] = note.written_at.isoformat()
    resource["author"] = [ref_to_fhir(note.author)]
    if note.signed_by is not None:
        if r4:
            resource["authenticator"] = ref_to_fhir(note.signed_by)
        else:
            attester: dict[str, Any] = {
                "mode": {"coding": [{"system": _ATTESTATION_MODE, "code": "professional"}]},
                "party": ref_to_fhir(note.signed_by),
            }
            if note.signed_at is not None:
                attester["time"] = note.signed_at.isoformat()
            resource["attester"] = [attester]
    content_type = note.format.value
    contents = [{"attachment": _attachment(note.text, content_type)}]
    contents += [
        {"attachment": _attachment(s.text, content_type, title=s.title)} for s in note.sections
    ]
    if not r4:
        for content in contents:  # R5 integer64 is a JSON string
            content["attachment"]["size"] = str(content["attachment"]["size"])
    resource["content"] = contents
    period = {"start": note.session_at.isoformat()}
    if r4:
        context: dict[str, Any] = {"encounter": [ref_to_fhir(note.encounter)], "period": period}
        if note.observations:
            context["related"] = [ref_to_fhir(o) for o in note.observations]
        resource["context"] = context
    else:
        resource["context"] = [ref_to_fhir(note.encounter)]
        resource["period"] = period
    return resource


def _coding(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def _provenance(note: SessionNote, document: Mapping[str, Any], version: str) -> dict[str, Any]:
    ai = note.ai_drafting
    assert ai is not None
    meta: dict[str, Any] = {"security": _security(note)}
    if version == "4.0.1":
        meta = {"profile": [PROFILE_SESSION_NOTE_PROVENANCE], **meta}
    agents: list[dict[str, Any]] = [
        {
            "type": _coding(t.PROVENANCE_PARTICIPANT_TYPE, "author"),
            "who": ref_to_fhir(tool_device(ai)),
        }
    ]
    if note.signed_by is not None:
        agents.append(
            {
                "type": _coding(t.PROVENANCE_PARTICIPANT_TYPE, "verifier"),
                "who": ref_to_fhir(note.signed_by),
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": resource_id(note.id, "#provenance"),
        "meta": meta,
        "target": [{"reference": f"DocumentReference/{document['id']}"}],
        # Provenance.recorded is required; we use the note's time, never the clock.
        "recorded": (note.signed_at or note.written_at).isoformat(),
        "agent": agents,
    }
    if ai.sources:
        resource["entity"] = [{"role": "source", "what": ref_to_fhir(s)} for s in ai.sources]
    return resource


def to_fhir(note: SessionNote, *, version: str = "4.0.1") -> list[dict[str, Any]]:
    """The resources carrying ``note``: its DocumentReference, and a Provenance if AI drafted it."""
    document = to_document_reference(note, version=version)
    if note.ai_drafting is None:
        return [document]
    return [document, _provenance(note, document, version)]


# --- FHIR → domain ----------------------------------------------------------------------------


def _extensions(resource: Mapping[str, Any], path: str) -> dict[str, list[tuple[Any, str]]]:
    found: dict[str, list[tuple[Any, str]]] = {}
    for i, raw in enumerate(read_list(resource.get("extension"), f"{path}.extension")):
        ext = obj(raw, f"{path}.extension[{i}]")
        url = req_str(ext.get("url"), f"{path}.extension[{i}].url")
        found.setdefault(url, []).append((ext, f"{path}.extension[{i}]"))
    return found


def _one(found: Mapping[str, list[tuple[Any, str]]], url: str) -> Any:
    items = found.get(url, [])
    if len(items) > 1:
        raise MappingError(f"more than one {url}", element=items[1][1])
    return items[0] if items else None


def _ai_from_fhir(ext: Mapping[str, Any], path: str) -> AiDrafting:
    parts = _extensions(ext, path)
    tool, tool_path = _need(parts, "tool", path)
    version, version_path = _need(parts, "version", path)
    inputs: list[DraftingInput] = []
    for part, part_path in parts.get("input", []):
        coding = obj(part.get("valueCoding"), f"{part_path}.valueCoding")
        if coding.get("system") != CS_DRAFTING_INPUTS:
            raise MappingError(
                f"expected a code from {CS_DRAFTING_INPUTS}", element=f"{part_path}.valueCoding"
            )
        try:
            kind = DraftingInput(req_str(coding.get("code"), f"{part_path}.valueCoding.code"))
        except ValueError:
            raise MappingError(
                "not a drafting input code", element=f"{part_path}.valueCoding.code"
            ) from None
        if kind in inputs:
            raise MappingError("input repeats", element=part_path)
        inputs.append(kind)
    if not inputs:
        raise MappingError("an AI drafting names at least one input", element=f"{path}.extension")
    sources = tuple(
        ref_from_fhir(part.get("valueReference"), f"{part_path}.valueReference")
        for part, part_path in parts.get("source", [])
    )
    unknown = sorted(set(parts) - {"tool", "version", "input", "source"})
    if unknown:
        raise MappingError("unknown part of the AI drafting extension", element=f"{path}.extension")
    return AiDrafting(
        tool=req_str(tool.get("valueString"), f"{tool_path}.valueString"),
        version=req_str(version.get("valueString"), f"{version_path}.valueString"),
        inputs=tuple(inputs),
        sources=sources,
    )


def _need(
    parts: Mapping[str, list[tuple[Any, str]]], name: str, path: str
) -> tuple[Mapping[str, Any], str]:
    items = parts.get(name, [])
    if len(items) != 1:
        raise MappingError(f"expected exactly one {name}", element=f"{path}.extension")
    ext, ext_path = items[0]
    return obj(ext, ext_path), ext_path


def _removal_from_fhir(ext: Mapping[str, Any], path: str) -> AiLabelRemoval:
    parts = _extensions(ext, path)
    by, by_path = _need(parts, "by", path)
    at, at_path = _need(parts, "at", path)
    statement, statement_path = _need(parts, "statement", path)
    return AiLabelRemoval(
        by=ref_from_fhir(by.get("valueReference"), f"{by_path}.valueReference"),
        at=read_instant(at.get("valueDateTime"), f"{at_path}.valueDateTime"),
        statement=req_str(statement.get("valueString"), f"{statement_path}.valueString"),
    )


def _labels(resource: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    """``meta.security`` as ``(system, code)``, in order, each system normalised (the OIDs and
    STU3 URLs of the HL7 v3 label systems become their URIs, as the consent gate reads them)."""
    meta = resource.get("meta")
    if meta is None:
        return []
    labels = read_list(obj(meta, f"{path}.meta").get("security"), f"{path}.meta.security")
    out: list[tuple[str, str]] = []
    for i, raw in enumerate(labels):
        label = obj(raw, f"{path}.meta.security[{i}]")
        out.append((normal_label(str(label.get("system"))), str(label.get("code"))))
    return out


def _only_our_labels(
    labels: Sequence[tuple[str, str]], note_labels: Sequence[dict[str, str]], path: str
) -> None:
    """Refuse a label the note's own mapping does not give it (``SUD`` another system added): the
    note model cannot keep it, and the note written again without it would escape a consent
    that denies it."""
    ours = {(label["system"], label["code"]) for label in note_labels}
    for i, label in enumerate(labels):
        if label not in ours:
            raise MappingError(
                "a security label the note cannot keep (it carries only R, BH, PSYTHPN, AIAST): "
                "refused, not dropped",
                element=f"{path}.meta.security[{i}]",
            )


def _category(resource: Mapping[str, Any], path: str) -> NoteCategory:
    concept = obj(resource.get("type"), f"{path}.type")
    codings = read_list(concept.get("coding"), f"{path}.type.coding", required=True)
    found: NoteCategory | None = None
    for i, raw in enumerate(codings):
        coding = obj(raw, f"{path}.type.coding[{i}]")
        if coding.get("system") == CS_NOTE_CONTENT:
            try:
                found = NoteCategory(str(coding.get("code")))
            except ValueError:
                raise MappingError(
                    "not a session-note-content code", element=f"{path}.type.coding[{i}].code"
                ) from None
    if found is None:
        # Never guessed: content not marked as progress or psychotherapy note is not ours to read.
        raise MappingError(
            f"the note type does not say what content it holds (no {CS_NOTE_CONTENT} coding)",
            element=f"{path}.type.coding",
        )
    return found


def _decode(attachment: Mapping[str, Any], path: str) -> tuple[str, NoteFormat, str | None]:
    content_type = req_str(attachment.get("contentType"), f"{path}.contentType")
    try:
        note_format = NoteFormat(content_type.split(";")[0].strip())
    except ValueError:
        raise MappingError(
            "expected text/markdown or text/plain", element=f"{path}.contentType"
        ) from None
    encoded = req_str(attachment.get("data"), f"{path}.data")
    try:
        data = base64.b64decode(encoded, validate=True)
        text = data.decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and base64's own for non-ASCII text
        raise MappingError("expected base64 of UTF-8 text", element=f"{path}.data") from None
    size = attachment.get("size")
    if isinstance(size, str) and size.isascii() and size.isdigit():
        size = digits_value(size)  # R5 integer64; one too long to convert matches no data
        if size is None:
            raise MappingError("size does not match the data", element=f"{path}.size")
    if size is not None and (isinstance(size, bool) or size != len(data)):
        raise MappingError("size does not match the data", element=f"{path}.size")
    digest = attachment.get("hash")
    expected = base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")  # noqa: S324
    if digest is not None and digest != expected:
        raise MappingError("hash is not the SHA-1 of the data", element=f"{path}.hash")
    return text, note_format, opt_str(attachment.get("title"), f"{path}.title")


def _content(
    resource: Mapping[str, Any], path: str
) -> tuple[str, NoteFormat, tuple[NoteSection, ...]]:
    contents = read_list(resource.get("content"), f"{path}.content", required=True)
    text = ""
    note_format = NoteFormat.MARKDOWN
    sections: list[NoteSection] = []
    for i, raw in enumerate(contents):
        cpath = f"{path}.content[{i}].attachment"
        body, fmt, title = _decode(
            obj(obj(raw, f"{path}.content[{i}]").get("attachment"), cpath), cpath
        )
        if i == 0:
            if title is not None:
                raise MappingError("the note text has no title", element=f"{cpath}.title")
            text, note_format = body, fmt
            continue
        if fmt is not note_format:
            raise MappingError("a section in another format", element=f"{cpath}.contentType")
        if title is None:
            raise MappingError("a section needs its title", element=f"{cpath}.title")
        sections.append(NoteSection(title=title, text=body))
    return text, note_format, tuple(sections)


def _status(resource: Mapping[str, Any], path: str) -> NoteStatus:
    status = req_str(resource.get("status"), f"{path}.status")
    doc_status = req_str(resource.get("docStatus"), f"{path}.docStatus")
    if status == "entered-in-error":
        return NoteStatus.ENTERED_IN_ERROR
    if status != "current":
        raise MappingError("expected current or entered-in-error", element=f"{path}.status")
    if doc_status not in _STATUS_BY_DOC_STATUS:
        raise MappingError("expected preliminary, final or amended", element=f"{path}.docStatus")
    return _STATUS_BY_DOC_STATUS[doc_status]


def _signature(
    resource: Mapping[str, Any], path: str, found: Mapping[str, list[tuple[Any, str]]]
) -> tuple[Ref | None, datetime | None]:
    if "attester" in resource:  # R5
        attesters = read_list(resource.get("attester"), f"{path}.attester")
        if len(attesters) != 1:
            raise MappingError("expected one attester", element=f"{path}.attester")
        attester = obj(attesters[0], f"{path}.attester[0]")
        time = attester.get("time")
        return (
            ref_from_fhir(attester.get("party"), f"{path}.attester[0].party"),
            None if time is None else read_instant(time, f"{path}.attester[0].time"),
        )
    by = (
        None
        if resource.get("authenticator") is None
        else ref_from_fhir(resource["authenticator"], f"{path}.authenticator")
    )
    signed_at = _one(found, EXT_SIGNED_AT)
    at = (
        None
        if signed_at is None
        else read_instant(signed_at[0].get("valueDateTime"), f"{signed_at[1]}.valueDateTime")
    )
    return by, at


def _context(
    resource: Mapping[str, Any], path: str, found: Mapping[str, list[tuple[Any, str]]]
) -> tuple[Ref, datetime, tuple[Ref, ...]]:
    context = resource.get("context")
    if isinstance(context, list):  # R5: context lists the encounter, period is top level
        if len(context) != 1:
            raise MappingError("expected the session's encounter", element=f"{path}.context")
        encounter = ref_from_fhir(context[0], f"{path}.context[0]")
        period = obj(resource.get("period"), f"{path}.period")
        session_at = read_instant(period.get("start"), f"{path}.period.start")
        related = tuple(
            ref_from_fhir(ext.get("valueReference"), f"{ext_path}.valueReference")
            for ext, ext_path in found.get(R4_CONTEXT_RELATED_EXTENSION, [])
        )
        return encounter, session_at, related
    ctx = obj(context, f"{path}.context")
    encounters = read_list(ctx.get("encounter"), f"{path}.context.encounter", required=True)
    if len(encounters) != 1:
        raise MappingError("expected the session's encounter", element=f"{path}.context.encounter")
    period = obj(ctx.get("period"), f"{path}.context.period")
    related = tuple(
        ref_from_fhir(r, f"{path}.context.related[{i}]")
        for i, r in enumerate(read_list(ctx.get("related"), f"{path}.context.related"))
    )
    return (
        ref_from_fhir(encounters[0], f"{path}.context.encounter[0]"),
        read_instant(period.get("start"), f"{path}.context.period.start"),
        related,
    )


def from_document_reference(
    resource: Mapping[str, Any], *, path: str = "DocumentReference"
) -> SessionNote:
    """Read a note back from its DocumentReference (R4 or R5); raises :class:`MappingError` naming
    the element. Labels must agree with the content: PSYTHPN exactly on psychotherapy-note content,
    AIAST exactly on AI-drafted content that was not explicitly rewritten."""
    resource = obj(resource, path)
    if resource.get("resourceType") != "DocumentReference":
        raise MappingError("expected a DocumentReference", element=f"{path}.resourceType")
    found = _extensions(resource, path)
    identifiers = read_list(resource.get("identifier"), f"{path}.identifier", required=True)
    category = _category(resource, path)
    ai_ext = _one(found, EXT_AI_DRAFTING)
    removal_ext = _one(found, EXT_AI_LABEL_REMOVAL)
    ai = None if ai_ext is None else _ai_from_fhir(*ai_ext)
    removal = None if removal_ext is None else _removal_from_fhir(*removal_ext)
    signed_by, signed_at = _signature(resource, path, found)
    text, note_format, sections = _content(resource, path)
    encounter, session_at, observations = _context(resource, path, found)
    authors = read_list(resource.get("author"), f"{path}.author", required=True)
    if len(authors) != 1:
        raise MappingError("expected one author, the therapist", element=f"{path}.author")
    labels = _labels(resource, path)
    psy = category is NoteCategory.PSYCHOTHERAPY_NOTE
    if psy != (t.LABEL_PSYCHOTHERAPY_NOTE in labels):
        raise MappingError(
            "PSYTHPN must label psychotherapy-note content and only it", element=f"{path}.meta"
        )
    ai_labelled = ai is not None and removal is None
    if ai_labelled != (t.LABEL_AI_ASSISTED in labels):
        raise MappingError(
            "AIAST must label AI-drafted content unless its removal is stated",
            element=f"{path}.meta",
        )
    try:
        note = SessionNote(
            id=identifier_from_fhir(identifiers[0], f"{path}.identifier[0]"),
            category=category,
            patient=ref_from_fhir(resource.get("subject"), f"{path}.subject"),
            encounter=encounter,
            author=ref_from_fhir(authors[0], f"{path}.author[0]"),
            session_at=session_at,
            written_at=read_instant(resource.get("date"), f"{path}.date"),
            text=text,
            format=note_format,
            status=_status(resource, path),
            sections=sections,
            ai_drafting=ai,
            ai_label_removal=removal,
            signed_by=signed_by,
            signed_at=signed_at,
            observations=observations,
        )
    except ValueError as exc:  # the model's own rules (a final note without its signature, …)
        raise MappingError(str(exc), element=path) from None
    _only_our_labels(labels, _security(note), path)
    return note


def from_fhir(resources: Sequence[Mapping[str, Any]]) -> list[SessionNote]:
    """Notes from their DocumentReferences; Provenances add nothing and are skipped. Element paths
    are ``Bundle.entry[i].resource…``."""
    notes: list[SessionNote] = []
    for index, raw in enumerate(resources):
        path = f"Bundle.entry[{index}].resource"
        resource = obj(raw, path)
        if resource.get("resourceType") == "Provenance":
            continue
        notes.append(from_document_reference(resource, path=path))
    return notes


# --- the AI-drafting consent question ---------------------------------------------------------

#: What drafting a note with AI does with the session's data: the tool uses it (consentaction).
_USE = Coding(system=t.CONSENT_ACTION, code="use")
_TREAT = Coding(system=t.V3_ACT_REASON, code="TREAT")
_DEVICE_ROLE = Coding(system=t.V3_PARTICIPATION_TYPE, code="DEV")


def ai_drafting_request(note: SessionNote, *, patient: Iterable[Ref] = ()) -> DecisionRequest:
    """May the note's AI tool (a ``DEV`` actor) use this patient's session data for treatment at
    the session time? ``patient`` adds other ways the patient is known. The note is named by its
    document type (the codes the gate reads from its DocumentReference's ``type`` and
    ``category``), so a consent excepting a document type ("not my psychotherapy notes") is read
    for the kind of note drafted. Raises ``ValueError`` for a note no AI drafted."""
    if note.ai_drafting is None:
        raise ValueError("the note was not drafted by AI")
    return DecisionRequest(
        patient=(note.patient, *patient),
        actors=(RequestActor(reference=tool_device(note.ai_drafting), role=_DEVICE_ROLE),),
        at=note.session_at,
        purposes=(_TREAT,),
        action=_USE,
        resource=RequestedResource(
            type="DocumentReference", codes=_document_codes(note), date=note.session_at
        ),
    )


def _document_codes(note: SessionNote) -> tuple[Coding, ...]:
    """The note's codes as the gate reads them from its DocumentReference: the codings of its
    ``type`` (LOINC 34904-3, the content kind), then of its ``category``."""
    return (
        Coding(system=NOTE_TYPE["system"], code=NOTE_TYPE["code"]),
        Coding(system=CS_NOTE_CONTENT, code=note.category.value),
        Coding(system=CLINICAL_NOTE_CATEGORY["system"], code=CLINICAL_NOTE_CATEGORY["code"]),
    )


def ai_drafting_decision(
    consents: Iterable[ConsentRecord], note: SessionNote, *, patient: Iterable[Ref] = ()
) -> ConsentDecision:
    """The client's recording/AI-notes consents (kind ``recording``; others are not asked) on
    :func:`ai_drafting_request`. Only a PERMIT allows an AI-drafted note to be created or disclosed."""
    recording = [c for c in consents if c.kind is ConsentKind.RECORDING]
    engine = ConsentEngine(recording, explicit_labels=frozenset())
    return engine.decide(ai_drafting_request(note, patient=patient))


#: Consent states that withdraw what a consent permitted.
_WITHDRAWN = frozenset({ConsentStatus.REVOKED, ConsentStatus.ENTERED_IN_ERROR})


def ai_disclosure_permitted(
    consents: Sequence[ConsentRecord], note: SessionNote, *, patient: Iterable[Ref] = ()
) -> bool:
    """May an AI-drafted note leave? Only while its drafting was permitted at the session time
    (:func:`ai_drafting_decision`) and no consent that permitted it has been revoked (or marked
    entered-in-error) since: a later revocation holds further disclosure. A note no AI drafted
    needs nothing here (``True``)."""
    if note.ai_drafting is None:
        return True
    decision = ai_drafting_decision(consents, note, patient=patient)
    if decision.outcome is not DecisionOutcome.PERMIT:
        return False
    status = {c.id: c.status for c in consents}
    return all(status.get(b.consent) not in _WITHDRAWN for b in decision.basis)


class NoteMapper:
    """The :class:`~fhir_alliance.mapping.registry.RecordMapper` for session notes."""

    kinds = KINDS
    resource_types = frozenset({"DocumentReference"})

    def load(self, data: Mapping[str, Any]) -> SessionNote:
        return load_note(data)

    def dump(self, record: SessionNote) -> dict[str, Any]:
        return dump_note(record)

    def to_fhir(self, record: SessionNote, *, version: str = "4.0.1") -> list[dict[str, Any]]:
        return to_fhir(record, version=version)

    def from_fhir(self, resources: Sequence[Mapping[str, Any]]) -> list[SessionNote]:
        return from_fhir(resources)


MAPPER = NoteMapper()
