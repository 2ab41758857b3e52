"""``fhir-alliance decide``: consents (FHIR R4/R5 Consents and R5 Permissions, Bundles with actors,
NDJSON, or our consent records) plus one request (our form or a CDS Hooks
``patient-consent-consult`` context) → decision.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from fhir_alliance.consent.cds_hooks import (
    DEFAULT_HOOK_ACTION,
    card_response,
    is_hook_request,
    request_from_hook,
)
from fhir_alliance.consent.decision import ACTION_MESSAGE, KNOWN_ACTIONS, CombiningRule
from fhir_alliance.consent.directory import (
    ACTOR_RESOURCE_TYPES,
    ActorDirectory,
    misspelt_resource_type,
)
from fhir_alliance.consent.engine import MAX_PROVISION_DEPTH, ConsentEngine
from fhir_alliance.consent.identity import consent_identifier, says_the_same
from fhir_alliance.consent.request_form import decision_to_json, load_decision_request
from fhir_alliance.errors import InputError, Issue, MappingError
from fhir_alliance.jsonio import parse_json_documents, read_input
from fhir_alliance.model.common import Coding, Identifier
from fhir_alliance.model.consent import ConsentRecord
from fhir_alliance.terminology import CONSENT_ACTION

__all__ = ["ConsentInputs", "read_consent_inputs", "register", "run_decide"]

#: Largest input file read (consents of one patient, with actors, fit easily).
MAX_INPUT_BYTES = 64 * 1024 * 1024

#: The resource types that carry a consent decision: Consents, and R5 Permissions (read as the
#: treatment permissions the library maps them to).
_DECISION_TYPES = frozenset({"Consent", "Permission"})
#: The resource types the consents input is read for: those, the Bundles that hold them, and the
#: actors of the directory. Resources of other types (a Consent's Provenance, a search Bundle's
#: OperationOutcome) carry no decision and are passed over.
_READ_RESOURCE_TYPES = _DECISION_TYPES | {"Bundle"} | ACTOR_RESOURCE_TYPES
_RESOURCE_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{1,63}")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "decide",
        help="decide a request against consents (FHIR R4/R5 or our JSON); LEAP-compatible",
        description=__doc__,
    )
    parser.add_argument(
        "consents",
        nargs="+",
        metavar="CONSENTS",
        help="files of Consents and R5 Permissions (FHIR JSON, Bundles with actor resources, "
        "NDJSON) or consent records",
    )
    parser.add_argument(
        "-r",
        "--request",
        required=True,
        metavar="FILE",
        help="the request: our JSON form, or a CDS Hooks patient-consent-consult body/context "
        "('-' reads standard input)",
    )
    parser.add_argument(
        "--combining",
        choices=[r.value for r in CombiningRule],
        default=CombiningRule.DENY_OVERRIDES.value,
        help="how several applicable consents combine (default: deny-overrides)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="FHIR server base the consents come from: absolute references on it equal relative "
        "ones (default: the one base of the Bundles' fullUrls, if they share one)",
    )
    parser.add_argument(
        "--batch",
        action="store_true",
        help="the request file holds many requests, one JSON object per line: print one JSON "
        "answer per line, in order (a bad request gives an error line; exit status 1)",
    )
    parser.add_argument(
        "--trace", action="store_true", help="also say why each other consent did not count"
    )
    parser.add_argument(
        "--at",
        metavar="INSTANT",
        help="request time (ISO 8601 with offset) when the request has none; default: now",
    )
    parser.add_argument(
        "--action",
        default=DEFAULT_HOOK_ACTION.code,
        help="consentaction code a CDS Hooks consult asks about (default: access)",
    )
    parser.set_defaults(handler=run_decide)


class ConsentInputs:
    """What the consent files held: records, the actor directory, and where each FHIR Consent was
    found (``fullUrl`` or ``Consent/<id>``, for LEAP's ``basedOn``; a record read from a Permission
    has none, so ``basedOn`` names the Consent it implements by identifier)."""

    def __init__(
        self,
        records: list[ConsentRecord],
        directory: ActorDirectory,
        locations: dict[Identifier, str],
    ) -> None:
        self.records = records
        self.directory = directory
        self.locations = locations


def _read_json_documents(name: str, data: bytes | str) -> list[Any]:
    """One JSON value (an array gives its items) or several, one per line (NDJSON), read strictly
    (:mod:`fhir_alliance.jsonio`: duplicate keys, positions, huge numbers, deep nesting)."""
    documents = parse_json_documents(data, source=name)
    if len(documents) == 1 and isinstance(documents[0], list):
        return documents[0]
    return documents


def _read_text(path: str) -> bytes:
    """The bytes of a file, or of stdin for ``-``; over :data:`MAX_INPUT_BYTES` is an error."""
    return read_input(path, max_bytes=MAX_INPUT_BYTES)


def read_consent_inputs(paths: Sequence[str]) -> ConsentInputs:
    """Read consent files: FHIR Consents (R4 or R5) and R5 Permissions (loose, in Bundles or
    NDJSON), actor resources (for the directory) and our consent records (with revocations, applied
    in order). Each consent is read once: a Permission given beside the Consent it implements is
    read as that Consent and must agree with it, and two consents with one business identifier
    must say the same (:func:`_once_by_identifier`)."""
    from fhir_alliance.mapping.consent import from_consent, from_permission
    from fhir_alliance.schemas.consent import RECORD_KIND_REVOCATION, load_consent_records

    fhir: list[tuple[Mapping[str, Any], str, str | None]] = []  # resource, where, location
    others: list[Mapping[str, Any]] = []
    # Our records and revocations, with where and when they were read: before the FHIR consent
    # of that index (stable order among themselves).
    ours: list[tuple[Any, str, tuple[int, int]]] = []
    for path in paths:
        for index, doc in enumerate(_read_json_documents(path, _read_text(path))):
            where = f"{path}[{index}]"
            if not isinstance(doc, Mapping):
                raise InputError(
                    f"{where}: expected a JSON object",
                    issues=[Issue(path=where, message="expected a JSON object")],
                )
            resource_type = doc.get("resourceType")
            if resource_type is not None and not isinstance(resource_type, str):
                raise _refused(f"{where}.resourceType", "expected a resource type (a string)")
            if resource_type is not None:
                _check_resource_type(resource_type, where)
            if resource_type in _DECISION_TYPES:
                _check_depth(doc, "provision", where)
                fhir.append((doc, where, _location(doc, None)))
            elif resource_type == "Bundle":
                others.append(doc)
                _bundle_consents(doc, where, fhir)
            elif resource_type is not None:
                others.append(doc)
            elif "kind" in doc:
                _check_depth(doc, "provisions", where)
                ours.append((doc, where, (len(fhir), 0)))
            else:
                raise InputError(
                    f"{where}: neither a FHIR resource nor a consent record",
                    issues=[Issue(path=where, message="no resourceType and no kind")],
                )
    read: list[_Read] = []
    locations: dict[Identifier, str] = {}
    for n, (resource, where, location) in enumerate(fhir):
        permission = resource["resourceType"] == "Permission"
        try:
            record = from_permission(resource) if permission else from_consent(resource)
        except MappingError as exc:
            element = f"{where}.{exc.element}" if exc.element else where
            raise MappingError(exc.message, element=element) from None
        read.append(_Read(record, where, _identifier_position(resource), permission, (n, 1)))
        if location:
            locations[record.id] = location
    if ours:
        ours = _without_repeats(ours, RECORD_KIND_REVOCATION)
        items = [doc for doc, _, _ in ours]
        try:
            loaded = load_consent_records(items)
        except InputError as exc:
            raise _at_file(exc, [where for _, where, _ in ours]) from None
        consents = [(w, n) for doc, w, n in ours if doc.get("kind") != RECORD_KIND_REVOCATION]
        read.extend(
            _Read(record, where, "id", False, n)
            for record, (where, n) in zip(loaded, consents, strict=True)
        )
    records = _once_by_identifier(sorted(read, key=lambda r: r.order))
    return ConsentInputs(records, ActorDirectory.from_resources(others), locations)


class _Read(NamedTuple):
    """A consent record as read: where, the position of its identifier there (``identifier[0]``,
    a record's ``id``, a Permission's evidence of its Consent), and in which order."""

    record: ConsentRecord
    where: str
    identifier_at: str
    permission: bool
    order: tuple[int, int]


def _identifier_position(resource: Mapping[str, Any]) -> str:
    """Where in ``resource`` (already read by the mapping) the identifier of its record is: the
    first ``identifier`` with a system and a value, else ``id``; in a Permission, its evidence
    naming the Consent it implements by identifier."""
    if resource["resourceType"] == "Permission":
        justification = resource.get("justification") or {}
        for n, item in enumerate(justification.get("evidence") or ()):
            if item.get("type") == "Consent" and item.get("identifier") is not None:
                return f"justification.evidence[{n}].identifier"
        return "justification.evidence"
    for n, item in enumerate(resource.get("identifier") or ()):
        if item.get("system") is not None and item.get("value") is not None:
            return f"identifier[{n}]"
    return "id"


def _without_repeats(
    ours: list[tuple[Any, str, tuple[int, int]]], revocation: str
) -> list[tuple[Any, str, tuple[int, int]]]:
    """Our records, a consent record given again as it was (the same file twice) left out: it is
    the same consent. Two records with one ``id`` that differ are refused by the loader."""
    seen: set[str] = set()
    kept = []
    for item in ours:
        if item[0].get("kind") != revocation:
            text = json.dumps(item[0], sort_keys=True)
            if text in seen:
                continue
            seen.add(text)
        kept.append(item)
    return kept


def _at_file(exc: InputError, wheres: list[str]) -> InputError:
    """An error of :func:`load_consent_records` (paths begin with the item's index among the
    records read) with each path beginning where that item was: its file and place."""
    issues = []
    for issue in exc.issues:
        head, dot, rest = issue.path.partition(".")
        if head.isdigit() and int(head) < len(wheres):
            issue = Issue(path=f"{wheres[int(head)]}{dot}{rest}", message=issue.message)
        issues.append(issue)
    return InputError.from_issues(issues)


def _once_by_identifier(read: list[_Read]) -> list[ConsentRecord]:
    """The records read, each consent once. Two with one business identifier (compared as URIs:
    :func:`~fhir_alliance.consent.identity.says_the_same`) that say the same are one; two that
    say otherwise (a history export's older, active version beside its newer, revoked one) are an
    error at the second one's identifier, naming where it is and never its value: the docs
    define no rule for which version counts, and reading both lets the older one's permit
    answer.

    A Permission is left out when the Consent it implements (the record of reference: a
    Permission carries only part of it) was read too and the Permission says the same
    (``from_permission(p) == permission_view(consent)``); one that says otherwise (a permit beside
    the declining Consent, active beside the revoked one) is an error at the Permission."""
    from fhir_alliance.mapping.consent import permission_view

    consents: dict[Identifier, _Read] = {}
    for item in read:
        if not item.permission:
            key = consent_identifier(item.record.id)
            first = consents.setdefault(key, item)
            if first is not item and not says_the_same(first.record, item.record):
                raise _same_identifier(item, first)
    permissions: dict[Identifier, _Read] = {}
    records: list[ConsentRecord] = []
    for item in read:
        key = consent_identifier(item.record.id)
        if not item.permission:
            if consents[key] is item:
                records.append(item.record)
            continue
        consent = consents.get(key)
        if consent is not None:
            if not says_the_same(permission_view(consent.record), item.record):
                raise _refused(
                    item.where,
                    "this Permission disagrees with the Consent it implements, also given: "
                    "give the two as they now are, or the Consent alone",
                )
            continue
        first = permissions.setdefault(key, item)
        if first is item:
            records.append(item.record)
        elif not says_the_same(first.record, item.record):
            raise _same_identifier(item, first)
    return records


def _same_identifier(second: _Read, first: _Read) -> InputError:
    message = (
        f"a consent with the same identifier, read before at {first.where}, says otherwise "
        "(another version?): give each consent once, as it now is"
    )
    return _refused(f"{second.where}.{second.identifier_at}", message)


def _refused(where: str, message: str) -> InputError:
    return InputError(f"{where}: {message}", issues=[Issue(path=where, message=message)])


def _check_resource_type(resource_type: str, where: str) -> None:
    """A resource type read (:data:`_READ_RESOURCE_TYPES`) or another FHIR resource type of R4 or
    R5 (passed over), never a near miss of one read (``consent``, ``"Consent "``, ``CONSENT``), a
    name that is no FHIR resource type (``Consnet``, ``Consents``) nor a string that names none:
    passed over, it could have been the Consent that denies."""
    meant = misspelt_resource_type(resource_type, _READ_RESOURCE_TYPES)
    if meant is not None:
        message = f"expected {meant}: a resource type is spelt exactly (case and spaces count)"
        raise _refused(f"{where}.resourceType", message)
    if not _RESOURCE_TYPE_NAME.fullmatch(resource_type):
        raise _refused(f"{where}.resourceType", "expected a FHIR resource type name")
    if resource_type in _READ_RESOURCE_TYPES:
        return
    # Only for a type not read here: the check imports that one model (fhir.resources).
    from fhir_alliance.mapping.validation import is_known_resource_type

    if not is_known_resource_type(resource_type):
        near = difflib.get_close_matches(resource_type, sorted(_READ_RESOURCE_TYPES), n=1)
        message = "not a FHIR resource type of R4 or R5" + (f" ({near[0]}?)" if near else "")
        raise _refused(f"{where}.resourceType", message)


def _bundle_consents(
    bundle: Mapping[str, Any], where: str, fhir: list[tuple[Mapping[str, Any], str, str | None]]
) -> None:
    """The Consents and Permissions of a Bundle's entries, in Bundles inside it too (as the actor
    directory reads them). An entry or a resource that is not what FHIR says it is, is an error:
    skipped, it might have been the Consent that denies."""
    entries = bundle.get("entry")
    if entries is None:
        return
    if not isinstance(entries, list):
        raise _refused(f"{where}.entry", "expected an array")
    for n, entry in enumerate(entries):
        at = f"{where}.entry[{n}]"
        if not isinstance(entry, Mapping):
            raise _refused(at, "expected an object")
        res = entry.get("resource")
        if res is None:  # a response or request entry without a resource
            continue
        if not isinstance(res, Mapping) or not isinstance(res.get("resourceType"), str):
            raise _refused(f"{at}.resource", "expected a FHIR resource (with a resourceType)")
        _check_resource_type(res["resourceType"], f"{at}.resource")
        if res["resourceType"] in _DECISION_TYPES:
            _check_depth(res, "provision", f"{at}.resource")
            full_url = entry.get("fullUrl")
            fhir.append(
                (
                    res,
                    f"{at}.resource",
                    _location(res, full_url if isinstance(full_url, str) else None),
                )
            )
        elif res["resourceType"] == "Bundle":
            _bundle_consents(res, f"{at}.resource", fhir)


def _check_depth(document: Mapping[str, Any], key: str, where: str) -> None:
    """Refuse provisions nested deeper than the engine compiles, before any recursive reader
    sees them: one short error instead of a path per level or a RecursionError."""
    stack: list[tuple[Any, int]] = [(document.get("provision"), 0)]
    while stack:
        node, depth = stack.pop()
        for item in node if isinstance(node, list) else [node]:
            if not isinstance(item, Mapping):
                continue
            if depth > MAX_PROVISION_DEPTH:
                raise InputError(
                    f"{where}: provisions nested deeper than {MAX_PROVISION_DEPTH} levels",
                    issues=[
                        Issue(
                            path=f"{where}.provision",
                            message=f"nested deeper than {MAX_PROVISION_DEPTH} levels (the limit)",
                        )
                    ],
                )
            stack.append((item.get(key), depth + 1))


def _location(resource: Mapping[str, Any], full_url: str | None) -> str | None:
    """Where a Consent was found, for LEAP's ``basedOn``; none for a Permission (``basedOn`` then
    names the Consent it implements by identifier, which is what a LEAP client looks up)."""
    if resource.get("resourceType") != "Consent":
        return None
    if full_url and not full_url.startswith("urn:"):
        return full_url
    resource_id = resource.get("id")
    return f"Consent/{resource_id}" if isinstance(resource_id, str) and resource_id else None


def _instant(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise InputError(
            "--at needs an ISO 8601 instant with a UTC offset",
            issues=[Issue(path="--at", message="expected e.g. 2025-06-01T09:00:00Z")],
        )
    return value


def run_decide(args: argparse.Namespace) -> int:
    if (CONSENT_ACTION, args.action) not in KNOWN_ACTIONS:
        raise InputError(
            "--action: unknown consent action",
            issues=[Issue(path="--action", message=ACTION_MESSAGE)],
        )
    inputs = read_consent_inputs(args.consents)
    if not inputs.records:
        print("decide: no consents were read; the answer can only be no-consent", file=sys.stderr)
    documents = _read_json_documents(args.request, _read_text(args.request))
    at = _instant(args.at)
    engine = ConsentEngine(
        inputs.records,
        directory=inputs.directory,
        base=args.base_url,
        combining=CombiningRule(args.combining),
    )
    if args.batch:
        return _decide_batch(engine, documents, inputs, args, at)
    if len(documents) != 1 or not isinstance(documents[0], Mapping):
        raise InputError(
            f"{args.request}: expected one JSON object (use --batch for many)",
            issues=[Issue(path=args.request, message="expected one JSON object")],
        )
    data = documents[0]
    if is_hook_request(data):
        print(json.dumps(_answer(engine, data, inputs, args, at), indent=2))
        return 0
    request = load_decision_request(data, at=at)
    decision = engine.decide(request, trace=args.trace)
    if args.json:
        print(json.dumps(decision_to_json(decision), indent=2))
    else:
        print(decision.explain())
    return 0


def _answer(
    engine: ConsentEngine,
    data: Mapping[str, Any],
    inputs: ConsentInputs,
    args: argparse.Namespace,
    at: datetime,
) -> dict[str, Any]:
    """One request's answer as JSON: LEAP's card for a hook request, else our decision form."""
    if is_hook_request(data):
        action = Coding(system=CONSENT_ACTION, code=args.action)
        decision = engine.decide(request_from_hook(data, at=at, action=action), trace=args.trace)
        return card_response(decision, locations=inputs.locations)
    decision = engine.decide(load_decision_request(data, at=at), trace=args.trace)
    return decision_to_json(decision)


def _decide_batch(
    engine: ConsentEngine,
    documents: list[Any],
    inputs: ConsentInputs,
    args: argparse.Namespace,
    at: datetime,
) -> int:
    """One compiled engine, many requests: one JSON line out per request in, in order."""
    failed = False
    for line, data in enumerate(documents, start=1):
        try:
            if not isinstance(data, Mapping):
                raise InputError(
                    "expected a JSON object", issues=[Issue(path="", message="expected an object")]
                )
            answer = _answer(engine, data, inputs, args, at)
        except InputError as exc:
            failed = True
            answer = {
                "line": line,
                "error": exc.message,
                "issues": [{"path": i.path, "message": i.message} for i in exc.issues],
            }
        print(json.dumps(answer, separators=(",", ":")))
    return 1 if failed else 0
