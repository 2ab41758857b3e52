"""Which free text the API and the console withhold, decided in one place for every record kind.

The rule (``docs/service.md``, Security; ``docs/console.md``, "Session notes: listed, never read"):

* **Psychotherapy-note content goes to no reader.** A record whose FHIR resources the library
  labels PSYTHPN (``meta.security``: a psychotherapy note, a rupture's or repair's session
  ``narrative``) has its free text withheld from every API key, ``admin`` included, and from
  every console session. Only a consent's explicit permit for PSYTHPN lets that content leave
  (45 CFR 164.508), and neither a key nor a console session is one.
* **A session note's text** is withheld from every console session and from API keys that may
  not read note text (the API's ``admin`` scope may).
* A record whose labels cannot be read (it no longer maps) counts as psychotherapy-note
  content: deny by default.

Free text is, in our JSON form, ``text``, each section's ``title`` and ``text``, the AI label
removal's ``statement`` and ``narrative``; in the FHIR resources the console shows, each
attachment's ``data`` and ``title``, the label-removal ``statement`` extension and each
``note``'s ``text``. Each is replaced by the reader's marker; everything else stays.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from fhir_alliance.errors import FhirAllianceError
from fhir_alliance.mapping.registry import mapper_for_kind
from fhir_alliance.schemas.notes import KIND_SESSION_NOTE
from fhir_alliance.terminology import LABEL_PSYCHOTHERAPY_NOTE
from fhir_alliance_service.store.interface import StoredRecord
from fhir_alliance_service.usecases.notes import FAMILY_NOTE

__all__ = [
    "PSYCHOTHERAPY_CONTENT_WITHHELD",
    "Withheld",
    "carries_label",
    "withhold_record_text",
    "withhold_resource_text",
    "withheld_text",
]

#: What replaces psychotherapy-note content (PSYTHPN) for every reader, API key or console session.
PSYCHOTHERAPY_CONTENT_WITHHELD: Final = (
    "(withheld: psychotherapy-note content (PSYTHPN) goes to no API key and no console session)"
)


class Withheld(enum.Enum):
    """Why a record's free text is withheld from a reader."""

    PSYCHOTHERAPY_CONTENT = "psychotherapy-note content"
    NOTE_TEXT = "session-note text"


#: Free-text fields of our JSON form (top level); a section is ``{title, text}``.
_TEXT_FIELDS: Final = ("text", "narrative")
_SECTIONS: Final = "sections"
_LABEL_REMOVAL: Final = "ai_label_removal"
_STATEMENT: Final = "statement"


def carries_label(resource: Mapping[str, Any], labels: Iterable[tuple[str, str]]) -> bool:
    """Whether ``resource``'s ``meta.security`` holds any of ``labels`` (``(system, code)``)."""
    wanted = frozenset(labels)
    meta = resource.get("meta")
    security = meta.get("security") if isinstance(meta, Mapping) else None
    return isinstance(security, list) and any(
        isinstance(label, Mapping) and (label.get("system"), label.get("code")) in wanted
        for label in security
    )


def _has_free_text(body: Mapping[str, Any]) -> bool:
    removal = body.get(_LABEL_REMOVAL)
    return (
        any(isinstance(body.get(name), str) for name in _TEXT_FIELDS)
        or bool(body.get(_SECTIONS))
        or (isinstance(removal, Mapping) and _STATEMENT in removal)
    )


def _mapped(record: StoredRecord) -> list[dict[str, Any]] | None:
    """The resources the library makes of ``record`` (R4; the labels are the same in R5), or
    ``None`` when it no longer maps."""
    try:
        mapper = mapper_for_kind(record.kind)
        return mapper.to_fhir(mapper.load(record.body))
    except (FhirAllianceError, ValueError, TypeError, LookupError):
        return None


def withheld_text(
    record: StoredRecord,
    *,
    resources: Sequence[Mapping[str, Any]] | None = None,
    note_text_readable: bool,
) -> Withheld | None:
    """Why ``record``'s free text is withheld from a reader, or ``None`` when it is shown whole.

    ``resources`` are the FHIR resources the library made of the record, if the caller has them
    (else they are made here, only for a record that has free text); ``note_text_readable`` says
    whether the reader may read a session note's text (an ``admin`` key; never a console session).
    """
    if not _has_free_text(record.body):
        return None
    labelled = resources if resources is not None else _mapped(record)
    if labelled is None or any(carries_label(r, [LABEL_PSYCHOTHERAPY_NOTE]) for r in labelled):
        return Withheld.PSYCHOTHERAPY_CONTENT
    is_note = record.family == FAMILY_NOTE or record.kind == KIND_SESSION_NOTE
    if is_note and not note_text_readable:
        return Withheld.NOTE_TEXT
    return None


def withhold_record_text(body: Mapping[str, Any], marker: str) -> dict[str, Any]:
    """A copy of a record's JSON form with its free text replaced by ``marker``: ``text``,
    ``narrative``, each section's ``title`` and ``text``, and the label-removal ``statement``.
    Every other field (category, status, signatures, AI drafting, codes, references) stays; the
    input is not changed."""
    copied = dict(body)
    for name in _TEXT_FIELDS:
        if isinstance(copied.get(name), str):
            copied[name] = marker
    sections = copied.get(_SECTIONS)
    if isinstance(sections, list):
        copied[_SECTIONS] = [
            {**s, **{k: marker for k in ("title", "text") if k in s}}
            if isinstance(s, Mapping)
            else marker
            for s in sections
        ]
    removal = copied.get(_LABEL_REMOVAL)
    if isinstance(removal, Mapping) and _STATEMENT in removal:
        copied[_LABEL_REMOVAL] = {**removal, _STATEMENT: marker}
    return copied


def withhold_resource_text(resource: Mapping[str, Any], marker: str) -> dict[str, Any]:
    """A copy of a FHIR resource with its free text replaced by ``marker``: each attachment's
    ``data`` and ``title`` (``size`` and ``hash`` stay, so versions can still be told apart), the
    label-removal ``statement`` extension and each ``note``'s ``text`` (an Observation's session
    narrative). Labels, codes and references stay; the input is not changed."""
    copied: dict[str, Any] = copy.deepcopy(dict(resource))
    for content in copied.get("content") or []:
        attachment = content.get("attachment") if isinstance(content, dict) else None
        if isinstance(attachment, dict):
            for name in ("data", "title"):
                if name in attachment:
                    attachment[name] = marker
    for extension in copied.get("extension") or []:
        for part in extension.get("extension") or [] if isinstance(extension, dict) else []:
            if isinstance(part, dict) and part.get("url") == _STATEMENT:
                part["valueString"] = marker
    for note in copied.get("note") or []:
        if isinstance(note, dict) and "text" in note:
            note["text"] = marker
    return copied
