"""``fhir-alliance export --bulk DIR``: our records as FHIR Bulk Data files, gated by consent.

Writes one NDJSON file per resource type (``Observation.ndjson``, ``Provenance.ndjson`` …) and a
``manifest.json`` in the shape of a Bulk Data export's completion response (``transactionTime``,
``request``, ``requiresAccessToken``, ``output`` with ``type``/``url``/``count``, ``error``), ready
for a server's ``$import`` or a vendor's bulk loader.

Every record is a disclosure, so it passes the consent gate first, like every other way out: the
consents file is required, and each record's resources are written only when the engine permits
disclosing every one of them to ``--recipient`` for ``--purpose`` now, with no obligation attached
(a redaction we would have to apply is not applied here: the record is held). Held records are
reported by their input label and outcome, never written, never with patient data.

Deny by default: every resource is decided. A resource whose patient cannot be determined (no
``subject``/``patient`` reference or identifier) holds its record (``patient-unknown``); a
Provenance, which names no patient, goes only with the decided resources of its record. Session
notes follow the service's gate: a draft is held until the therapist signs it (``draft-note``), any
other note nobody signed (entered-in-error without a signature) is held too (``unsigned-note``: an
export has no earlier version to correct), and an AI-drafted note leaves only while the client's
recording/AI-notes consent in the consents files permits it (``ai-notes-not-permitted``,
:func:`fhir_alliance.mapping.note.ai_disclosure_permitted`).

All records are loaded and checked first (every error reported together, nothing written); then
resources are mapped, validated, gated and written one record at a time, each line as it is made.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from fhir_alliance.errors import InputError, Issue

__all__ = ["HOLD_WORDS", "BulkResult", "export_bulk", "register"]

MANIFEST = "manifest.json"

#: Why a record was held, beyond an engine outcome: machine code -> plain words (the service's
#: gate uses the same codes).
HOLD_WORDS = {
    "patient-unknown": "the patient of a resource cannot be determined, so it cannot be decided",
    "draft-note": "a draft note is not sent before the therapist signs it",
    "unsigned-note": "a note nobody signed is not sent",
    "ai-notes-not-permitted": (
        "the client's recording/AI-notes consent does not permit disclosing this AI-drafted note"
    ),
}


def _patient_of(resource: Mapping[str, Any]) -> str | None:
    """The resource's patient as ``disclosure_request`` takes it (a reference, or an identifier
    as ``system|value``); ``None`` when it names none that can be used."""
    ref = resource.get("subject") or resource.get("patient")
    if not isinstance(ref, Mapping):
        return None
    reference = ref.get("reference")
    if isinstance(reference, str) and reference.strip() == reference and reference:
        return reference
    identifier = ref.get("identifier")
    if isinstance(identifier, Mapping):
        system, value = identifier.get("system"), identifier.get("value")
        if isinstance(system, str) and isinstance(value, str) and system and value:
            return f"{system}|{value}"
    return None


def _note_hold(item: Any, consents: Any) -> str | None:
    """The service gate's note rules for one input form: a draft is held, and so is any other
    unsigned note; an AI-drafted note goes only while its recording/AI-notes consent permits it.
    ``None`` for anything else."""
    from fhir_alliance.mapping.note import ai_disclosure_permitted
    from fhir_alliance.model.notes import NoteStatus
    from fhir_alliance.schemas.notes import KINDS, load_note

    kind = item.get("kind") if isinstance(item, Mapping) else None
    if kind not in KINDS:
        return None
    note = load_note(item)
    if note.status is NoteStatus.DRAFT:
        return "draft-note"
    if note.signed_at is None:
        return "unsigned-note"
    if not ai_disclosure_permitted(consents, note):
        return "ai-notes-not-permitted"
    return None


class BulkResult:
    """What an export wrote (resources per type) and held (input label → outcome)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.held: list[tuple[str, str]] = []


def export_bulk(
    items: list[tuple[str, Any]],
    out_dir: Path,
    *,
    engine: Any,
    recipient: str,
    purposes: list[str],
    version: str = "4.0.1",
    at: datetime | None = None,
) -> BulkResult:
    """Write the permitted records of ``items`` (labelled JSON forms) under ``out_dir``."""
    from fhir_alliance.consent.decision import DecisionOutcome
    from fhir_alliance.consent.gate import disclosure_request
    from fhir_alliance.mapping.cli import resource_groups

    groups = resource_groups(items, version=version)  # raises before anything is written
    forms = dict(items)  # label -> input form, for the note rules
    consents = tuple(engine.consents)
    when = at or datetime.now(UTC)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = BulkResult()
    handles: dict[str, IO[bytes]] = {}
    try:
        for label, resources in groups:
            outcome: str | None = _note_hold(forms.get(label), consents)
            decided = 0
            for resource in resources if outcome is None else ():
                patient = _patient_of(resource)
                if patient is None:
                    if resource.get("resourceType") == "Provenance":
                        continue  # follows the record it describes; held unless that is decided
                    outcome = "patient-unknown"
                    break
                request = disclosure_request(
                    resource, patient=patient, recipient=recipient, purposes=purposes, at=when
                )
                decision = engine.decide(request)
                if decision.outcome is not DecisionOutcome.PERMIT or decision.obligations:
                    outcome = decision.outcome.value
                    if decision.obligations:
                        outcome += " with obligations"
                    break
                decided += 1
            if outcome is None and not decided:
                outcome = "patient-unknown"  # nothing in the record was decided: deny by default
            if outcome is not None:
                result.held.append((label, outcome))
                continue
            for resource in resources:
                kind = str(resource["resourceType"])
                handle = handles.get(kind)
                if handle is None:
                    handle = handles[kind] = (out_dir / f"{kind}.ndjson").open("wb")
                handle.write(orjson.dumps(resource) + b"\n")
                result.counts[kind] = result.counts.get(kind, 0) + 1
    finally:
        for handle in handles.values():
            handle.close()
    manifest = {
        "transactionTime": when.isoformat(),
        "request": "fhir-alliance export --bulk",
        "requiresAccessToken": False,
        "output": [
            {"type": kind, "url": (out_dir / f"{kind}.ndjson").resolve().as_uri(), "count": n}
            for kind, n in sorted(result.counts.items())
        ],
        "error": [],
    }
    (out_dir / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return result


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write records as FHIR Bulk Data NDJSON files plus a manifest, gated by consent",
        description=__doc__,
    )
    parser.add_argument("inputs", nargs="+", metavar="FILE", help="our JSON records")
    parser.add_argument("--bulk", required=True, metavar="DIR", help="directory to write into")
    parser.add_argument(
        "--consents",
        required=True,
        action="append",
        metavar="FILE",
        help="consents (FHIR or our JSON) and actor resources; repeatable; required",
    )
    parser.add_argument("--recipient", required=True, help="who receives the files (a reference)")
    parser.add_argument(
        "--purpose", required=True, action="append", help="v3 PurposeOfUse code, e.g. TREAT"
    )
    parser.add_argument("--fhir-version", choices=("4.0.1", "5.0.0"), default="4.0.1")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from fhir_alliance.consent.cli import read_consent_inputs
    from fhir_alliance.consent.engine import ConsentEngine
    from fhir_alliance.mapping.cli import paused_gc, read_items

    consents = read_consent_inputs(args.consents)
    if not consents.records:
        message = "no consent found in the consents files; nothing may be disclosed"
        raise InputError(message, issues=[Issue(path="--consents", message=message)])
    engine = ConsentEngine(consents.records, directory=consents.directory)
    with paused_gc():
        result = export_bulk(
            read_items(args.inputs),
            Path(args.bulk),
            engine=engine,
            recipient=args.recipient,
            purposes=args.purpose,
            version=args.fhir_version,
        )
    written = ", ".join(f"{n} {kind}" for kind, n in sorted(result.counts.items())) or "nothing"
    print(f"wrote {written} to {args.bulk} ({MANIFEST})", file=sys.stderr)
    for label, outcome in result.held:
        words = HOLD_WORDS.get(outcome)
        print(f"held {label}: {outcome}" + (f" ({words})" if words else ""), file=sys.stderr)
    return 0
