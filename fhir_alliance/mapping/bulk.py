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

All records are loaded and checked first (every error reported together, nothing written); then
resources are mapped, validated, gated and written one record at a time, each line as it is made.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from fhir_alliance.errors import InputError, Issue

__all__ = ["BulkResult", "export_bulk", "register"]

MANIFEST = "manifest.json"


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
    when = at or datetime.now(UTC)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = BulkResult()
    handles: dict[str, IO[bytes]] = {}
    try:
        for label, resources in groups:
            outcome = DecisionOutcome.PERMIT.value
            for resource in resources:
                subject = (resource.get("subject") or {}).get("reference")
                if subject is None:  # a Provenance follows the record it describes
                    continue
                request = disclosure_request(
                    resource, patient=subject, recipient=recipient, purposes=purposes, at=when
                )
                decision = engine.decide(request)
                if decision.outcome is not DecisionOutcome.PERMIT or decision.obligations:
                    outcome = decision.outcome.value
                    if decision.obligations:
                        outcome += " with obligations"
                    break
            if outcome != DecisionOutcome.PERMIT.value:
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
        print(f"held {label}: {outcome}", file=sys.stderr)
    return 0
