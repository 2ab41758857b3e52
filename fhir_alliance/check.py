"""``fhir-alliance check``: prove a FHIR server (a sandbox, a vendor's test system) works with us.

Reads ``/metadata`` and names the capability gaps, then runs a round trip with an Observation and a
Consent in our profiles: create, search by identifier, update with If-Match, a stale If-Match that
must fail with 412, delete and confirm. Test data is tagged (run id, HTEST) and deleted afterwards;
the cleanup deletes only what carries the run tag (checked on a read just before each delete) and
reads each one back. Ctrl-C and SIGTERM stop the round trip, run the cleanup and print the report.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir_alliance.client import (
    Auth,
    BasicAuth,
    BearerTokenAuth,
    FhirClient,
    NoAuth,
    RetryPolicy,
    SmartBackendAuth,
    WriteResult,
)
from fhir_alliance.client.links import is_fhir_id
from fhir_alliance.errors import (
    FhirAllianceError,
    InputError,
    Issue,
    NotFoundError,
    ServerError,
    TransportError,
    VersionConflictError,
    loggable_outcome,
)
from fhir_alliance.model.common import Identifier
from fhir_alliance.terminology import CANONICAL_BASE, IDENTIFIER_SYSTEM_BASE, LABEL_TEST_DATA

__all__ = ["RUN_TAG_SYSTEM", "CheckReport", "check_resources", "register", "run_check"]

#: Code system of the run tag in ``meta.tag`` (the same as the test-server plugin's ``run_tag``).
RUN_TAG_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/test-run"
#: Identifier system of the records the check writes (synthetic; no real patient).
CHECK_IDENTIFIER_SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/sandbox-check"
CHECK_PATIENT = f"{IDENTIFIER_SYSTEM_BASE}/sandbox-check-patient|synthetic-client-1"
#: Resource types the cleanup searches by the run tag (what the check, or a server, may create).
CLEANUP_TYPES = ("Observation", "Consent", "Provenance")
#: Most search pages the cleanup reads per type (a server ignoring ``_tag`` answers everything).
CLEANUP_MAX_PAGES = 10


def carries_run_tag(resource: Mapping[str, Any], run_id: str) -> bool:
    """Whether ``resource.meta.tag`` holds this run's tag (system and code)."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, Mapping) else None
    return isinstance(tags, list) and any(
        isinstance(tag, Mapping)
        and tag.get("system") == RUN_TAG_SYSTEM
        and tag.get("code") == run_id
        for tag in tags
    )


def _records(run_id: str, now: str) -> list[dict[str, Any]]:
    """Two records in our JSON form: a client's trust rating and a sharing consent (synthetic)."""
    patient = {"identifier": CHECK_PATIENT, "type": "Patient"}
    return [
        {
            "kind": "dimension-rating",
            "id": f"{CHECK_IDENTIFIER_SYSTEM}|{run_id}-rating",
            "dimension": "trust",
            "scale": "likert-1-5",
            "value": 4,
            "patient": patient,
            "effective": now,
            "rater": {"role": "client"},
        },
        {
            "kind": "consent",
            "id": f"{CHECK_IDENTIFIER_SYSTEM}|{run_id}-consent",
            "consent_kind": "sharing",
            "patient": patient,
            "status": "active",
            "decision": "permit",
            "date": now,
            "policy_basis": [{"uri": f"{CANONICAL_BASE}/sandbox-check-policy"}],
            "categories": [{"system": "http://loinc.org", "code": "59284-0"}],
            "provision": {
                "actions": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                        "code": "disclose",
                    }
                ],
                "purposes": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "TREAT",
                    }
                ],
            },
        },
    ]


def check_resources(
    run_id: str, *, version: str = "4.0.1", now: str | None = None
) -> list[dict[str, Any]]:
    """The Observation and Consent the check writes, built by our mappers (so: in our profiles),
    tagged with the run id (``meta.tag``) and as test data (``meta.security`` HTEST)."""
    from fhir_alliance.mapping.registry import mapper_for_kind

    stamp = now or datetime.now(UTC).replace(microsecond=0).isoformat()
    resources: list[dict[str, Any]] = []
    for record_json in _records(run_id, stamp):
        mapper = mapper_for_kind(record_json["kind"])
        for resource in mapper.to_fhir(mapper.load(record_json), version=version):
            meta = resource.setdefault("meta", {})
            meta["tag"] = [*meta.get("tag", []), {"system": RUN_TAG_SYSTEM, "code": run_id}]
            test_label = {"system": LABEL_TEST_DATA[0], "code": LABEL_TEST_DATA[1]}
            meta["security"] = [*meta.get("security", []), test_label]
            resources.append(resource)
    return resources


def _amended(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A real content change for the If-Match update (servers skip versions for no-op updates)."""
    changed = dict(resource)
    if changed["resourceType"] == "Observation":
        changed["status"] = "amended" if changed.get("status") != "amended" else "corrected"
    else:
        key = "dateTime" if "dateTime" in changed else "date"
        changed[key] = datetime.now(UTC).replace(microsecond=0).isoformat()
        if changed.get(key) == resource.get(key):
            changed[key] = "2000-01-01T00:00:00+00:00"
    return changed


@dataclass
class Step:
    name: str
    resource_type: str
    ok: bool
    detail: str


@dataclass
class CheckReport:
    """Everything the check found; ``ok`` only when every round-trip step passed, the run was not
    interrupted and the cleanup confirmed everything of the run deleted.

    ``cleanup_remaining``: resources of this run (``Type/id``) not confirmed deleted.
    ``cleanup_failures``: what kept the cleanup from knowing (a tag search that failed, an
    interrupted cleanup). ``cleanup_notes``: what it left alone on purpose (tag-search hits
    without the run tag: another user's data on a server that ignored ``_tag``).
    ``interrupted``: the signal (``SIGINT``, ``SIGTERM``) that stopped the run, if one did.
    """

    base_url: str
    run_id: str
    capabilities: dict[str, Any] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    cleanup_deleted: int = 0
    cleanup_remaining: list[str] = field(default_factory=list)
    cleanup_failures: list[str] = field(default_factory=list)
    cleanup_notes: list[str] = field(default_factory=list)
    cleanup_ran: bool = False
    fatal: str | None = None
    interrupted: str | None = None

    @property
    def run_tag(self) -> str:
        """The run's ``meta.tag`` as a token search value: ``system|run id``."""
        return f"{RUN_TAG_SYSTEM}|{self.run_id}"

    @property
    def ok(self) -> bool:
        return (
            self.fatal is None
            and self.interrupted is None
            and bool(self.steps)
            and all(s.ok for s in self.steps)
            and not self.cleanup_remaining
            and not self.cleanup_failures
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["run_tag"] = self.run_tag
        out["ok"] = self.ok
        return out

    def to_text(self) -> str:
        lines = [f"FHIR server check: {self.base_url}", f"run id: {self.run_id}", ""]
        caps = self.capabilities
        if caps:
            lines.append(
                f"server: {caps.get('software') or 'unknown software'}, FHIR {caps.get('fhirVersion')}"
                f" ({caps.get('release') or 'unsupported version'})"
            )
        if self.gaps:
            lines.append("capability gaps:")
            lines.extend(f"  - {gap}" for gap in self.gaps)
        elif caps:
            lines.append("capability gaps: none")
        if self.steps:
            lines.append("round trip:")
            for s in self.steps:
                lines.append(
                    f"  [{'ok' if s.ok else 'FAIL'}] {s.resource_type} {s.name}: {s.detail}"
                )
        if self.cleanup_remaining:
            lines.append(f"cleanup: NOT deleted: {', '.join(self.cleanup_remaining)}")
        lines.extend(f"cleanup: {failure}" for failure in self.cleanup_failures)
        lines.extend(f"cleanup: {note}" for note in self.cleanup_notes)
        if self.cleanup_remaining or self.cleanup_failures:
            lines.append(
                f"  delete by hand what carries meta.tag {self.run_tag} "
                f"(search e.g. [base]/Observation?_tag={self.run_tag})"
            )
        elif self.cleanup_ran:
            lines.append(
                "cleanup: every resource of the run deleted and read back as gone "
                f"({self.cleanup_deleted} deleted by the cleanup); deleted versions may remain in "
                "the server's _history"
            )
        if self.fatal:
            lines.append(f"stopped: {self.fatal}")
        if self.interrupted:
            ran = "the cleanup ran" if self.cleanup_ran else "nothing had been written"
            lines.append(f"stopped: interrupted ({self.interrupted}); {ran}")
        lines.append("")
        lines.append("RESULT: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


#: What to try next, for failures that happen before any HTTP answer (by message prefix).
_TRANSPORT_HINTS = (
    (
        "TLS certificate verification failed",
        "the server's certificate is not trusted: pass --ca-bundle (or set REQUESTS_CA_BUNDLE "
        "or SSL_CERT_FILE) with the CA that signed it",
    ),
    ("TLS handshake failed", "check that the URL's port speaks https, and --ca-bundle"),
    ("host not found", "check the host name in --base-url (and DNS)"),
    ("connection refused", "check that the server runs and the port in --base-url is right"),
    ("request timed out", "the server did not answer in time: raise --timeout or --deadline"),
    ("request exceeded its deadline", "the call took too long in all: raise --deadline"),
)


def _describe(exc: FhirAllianceError) -> str:
    """Our message plus the outcome's issue codes, or a hint for transport failures; never the
    server's diagnostics."""
    text = exc.message
    if isinstance(exc, ServerError) and exc.outcome:
        codes = ",".join(f"{i['severity']}/{i['code']}" for i in loggable_outcome(exc.outcome))
        text += f" [{codes}]"
    if isinstance(exc, TransportError):
        hint = next((h for prefix, h in _TRANSPORT_HINTS if text.startswith(prefix)), None)
        if hint:
            text += f"; {hint}"
    return text


def _round_trip(
    client: FhirClient, resource: dict[str, Any], report: CheckReport, created: list[str]
) -> None:
    rtype = resource["resourceType"]

    def step(name: str, ok: bool, detail: str) -> bool:
        report.steps.append(Step(name, rtype, ok, detail))
        return ok

    try:
        written: WriteResult = client.create_once(resource)
    except FhirAllianceError as exc:
        step("create", False, _describe(exc))
        return
    if written.id:
        created.append(f"{rtype}/{written.id}")
    strategy = client.capabilities().write_strategy(rtype)
    if not step(
        "create",
        bool(written.id and written.version_id),
        f"HTTP {written.status} via {strategy.value if strategy else 'create'}, version "
        f"{written.version_id or '(none reported)'}",
    ):
        return
    ident = resource["identifier"]
    first = ident[0] if isinstance(ident, list) else ident
    try:
        found = client.find_by_identifier(rtype, Identifier(first["system"], first["value"]))
        step(
            "search by identifier",
            [r.get("id") for r in found] == [written.id],
            f"{len(found)} match(es)",
        )
        current = client.read(rtype, written.id or "")
        if not step(
            "read back",
            carries_run_tag(current, report.run_id),
            "carries the run tag"
            if carries_run_tag(current, report.run_id)
            else "the resource at the id the server gave lacks the run tag: not changed or deleted",
        ):
            return
        version = str((current.get("meta") or {}).get("versionId") or written.version_id)
        updated = client.update(_amended(current), if_match=version)
        if not step(
            "update with If-Match",
            bool(updated.version_id and updated.version_id != version),
            f"HTTP {updated.status}, version {version} -> {updated.version_id}",
        ):
            return
        try:
            client.update(_amended(current), if_match=version)
            step("stale If-Match", False, "server accepted a stale If-Match (expected 412)")
        except VersionConflictError as exc:
            if exc.status == 412:
                step("stale If-Match", True, "refused with HTTP 412 as expected")
            else:
                step("stale If-Match", True, f"refused with HTTP {exc.status}")
                report.gaps.append(
                    f"{rtype}: a stale If-Match is refused with HTTP {exc.status}; FHIR R4 says 412"
                )
        status = client.delete(rtype, written.id or "")
        try:
            client.read(rtype, written.id or "")
            step("delete", False, f"HTTP {status}, but the resource can still be read")
        except NotFoundError as exc:
            step("delete", True, f"HTTP {status}; then read gives HTTP {exc.status}")
    except FhirAllianceError as exc:
        step("round trip", False, _describe(exc))


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt for the duration of the check (see ``_interrupts``)."""


def _signal_name(exc: KeyboardInterrupt) -> str:
    return "SIGTERM" if isinstance(exc, _Terminated) else "SIGINT"


def _cleanup(
    client: FhirClient,
    report: CheckReport,
    created: list[str],
    search_types: tuple[str, ...] = CLEANUP_TYPES,
) -> None:
    """Delete what this run created: the ids it knows, then what a ``_tag`` search finds.

    Only resources that carry the run tag are deleted, checked on a read just before the delete
    (a server may ignore ``_tag`` and answer everything; another run's data must survive); a read
    that fails leaves the resource alone. Each delete is confirmed by a read that must give
    404/410. An interrupt (Ctrl-C, SIGTERM) during the cleanup lists what was not yet confirmed.
    """
    report.cleanup_ran = True
    run_id = report.run_id
    targets = list(dict.fromkeys(created))
    settled: set[str] = set()
    try:
        for rtype in search_types:
            untagged = invalid = 0
            try:
                for resource in client.search(
                    rtype, {"_tag": report.run_tag}, max_pages=CLEANUP_MAX_PAGES, strict=True
                ):
                    if not carries_run_tag(resource, run_id):
                        untagged += 1
                    elif resource.get("resourceType") != rtype or not is_fhir_id(
                        resource.get("id")
                    ):
                        invalid += 1
                    else:
                        targets.append(f"{rtype}/{resource['id']}")
            except FhirAllianceError as exc:
                report.cleanup_failures.append(
                    f"cleanup could not search {rtype} by tag {run_id}: {_describe(exc)}"
                )
            if untagged:
                report.cleanup_notes.append(
                    f"the {rtype} tag search answered {untagged} resource(s) without the run tag "
                    "(the server may ignore _tag); left alone"
                )
            if invalid:
                report.cleanup_failures.append(
                    f"the {rtype} tag search answered {invalid} resource(s) with the run tag but "
                    "an invalid id or another type; not deleted"
                )
        for reference in dict.fromkeys(targets):
            if _delete_if_ours(client, report, reference):
                report.cleanup_remaining.append(reference)
            settled.add(reference)
    except KeyboardInterrupt as exc:
        report.interrupted = report.interrupted or _signal_name(exc)
        report.cleanup_failures.append("cleanup interrupted before it finished")
        report.cleanup_remaining.extend(
            r
            for r in dict.fromkeys(targets)
            if r not in settled and r not in report.cleanup_remaining
        )


def _delete_if_ours(client: FhirClient, report: CheckReport, reference: str) -> bool:
    """Delete ``reference`` if a read shows it carries the run tag, and confirm it is gone;
    True when it may still be on the server."""
    rtype, _, rid = reference.partition("/")
    try:
        current = client.read(rtype, rid)
    except NotFoundError:
        return False  # deleted by the round trip (or never stored)
    except FhirAllianceError:
        return True  # cannot tell what it is: do not delete
    if not carries_run_tag(current, report.run_id):
        report.cleanup_notes.append(f"{reference} read back without the run tag; not deleted")
        return True
    try:
        client.delete(rtype, rid)
    except NotFoundError:
        pass
    except FhirAllianceError:
        return True
    try:
        client.read(rtype, rid)
    except NotFoundError:
        report.cleanup_deleted += 1
        return False
    except FhirAllianceError:
        return True
    return True  # the server answered the DELETE but still serves the resource


def run_check(
    client: FhirClient,
    *,
    run_id: str | None = None,
    resources: Callable[[str, str], list[dict[str, Any]]] | None = None,
) -> CheckReport:
    """Run the check against ``client``'s server; never raises for server trouble (it is reported).

    A KeyboardInterrupt (Ctrl-C; SIGTERM under the command) stops the round trip; the cleanup
    still runs and the report says ``interrupted``. A second one stops the cleanup, and what it
    had not confirmed deleted is listed in ``cleanup_remaining``.
    """
    report = CheckReport(base_url=client.base.url, run_id=run_id or str(uuid.uuid4()))
    make = resources or (lambda rid, version: check_resources(rid, version=version))
    try:
        caps = client.capabilities()
    except FhirAllianceError as exc:
        report.fatal = f"could not read the CapabilityStatement: {_describe(exc)}"
        return report
    except KeyboardInterrupt as exc:  # nothing written yet: nothing to clean up
        report.interrupted = _signal_name(exc)
        return report
    report.capabilities = caps.to_summary()
    report.gaps = caps.gaps()
    created: list[str] = []
    written_types: set[str] = set()
    try:
        for resource in make(report.run_id, caps.wire_version):
            written_types.add(resource["resourceType"])
            _round_trip(client, resource, report, created)
    except FhirAllianceError as exc:
        report.fatal = _describe(exc)
    except KeyboardInterrupt as exc:
        report.interrupted = _signal_name(exc)
    # A type the check did not write and the server does not list cannot hold the run's data;
    # searching it would only fail (and fail the check) on servers without it.
    search_types = tuple(t for t in CLEANUP_TYPES if t in written_types or t in caps.resources)
    _cleanup(client, report, created, search_types)
    return report


# ---------------------------------------------------------------------------- command line


def _auth_from_args(args: argparse.Namespace) -> Auth:
    kind = args.auth
    if kind == "none":
        return NoAuth()
    if kind == "bearer":
        token = os.environ.get(args.token_env, "")
        if not token:
            raise InputError(
                f"set the bearer token in ${args.token_env}",
                issues=[Issue(path="--token-env", message=f"${args.token_env} is empty")],
            )
        return BearerTokenAuth(token)
    if kind == "basic":
        password = os.environ.get(args.password_env, "")
        return BasicAuth(args.username or "", password)
    missing = [
        Issue(path=f"--{name.replace('_', '-')}", message="required for --auth smart")
        for name in ("client_id", "private_key", "key_id")
        if not getattr(args, name)
    ]
    if missing:
        raise InputError("SMART backend services needs more options", issues=missing)
    try:
        pem = Path(args.private_key).read_bytes()
    except OSError as exc:
        raise InputError(
            "cannot read the private key file",
            issues=[Issue(path="--private-key", message="cannot be read")],
        ) from exc
    return SmartBackendAuth(
        args.client_id,
        pem,
        key_id=args.key_id,
        algorithm=args.algorithm,
        scope=args.scope,
        token_url=args.token_url,
    )


#: Environment variables naming a CA bundle, in the order they are read (requests' own and
#: OpenSSL's), when ``--ca-bundle`` is not given.
CA_BUNDLE_ENV = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


def _ca_bundle(args: argparse.Namespace) -> str | None:
    """The CA bundle path from ``--ca-bundle`` or the environment; InputError if unreadable."""
    source, path = "--ca-bundle", args.ca_bundle
    if not path:
        source, path = next(
            ((name, os.environ[name]) for name in CA_BUNDLE_ENV if os.environ.get(name)),
            ("", None),
        )
    if path is None:
        return None
    if not Path(path).is_file():
        raise InputError(
            "the CA bundle is not a readable file",
            issues=[Issue(path=source, message="no such file")],
        )
    return str(path)


def positive_number(text: str) -> float:
    """argparse type: a number above 0 (seconds, for timeouts and deadlines)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def client_from_args(args: argparse.Namespace) -> FhirClient:
    """The client for the options :func:`add_server_options` added."""
    timeout = float(args.timeout)
    deadline = float(args.deadline)
    return FhirClient(
        args.base_url,
        auth=_auth_from_args(args),
        timeout=(min(timeout, 10.0), timeout),
        deadline=deadline,
        retry=RetryPolicy(max_attempts=3, max_elapsed=deadline),
        allow_insecure_http=args.allow_insecure_http,
        ca_bundle=_ca_bundle(args),
    )


class _Interrupts:
    """How SIGINT and SIGTERM act while ``check`` runs (installed by :func:`_interrupts`).

    Until ``finishing`` is set each raises an interrupt (SIGTERM as :class:`_Terminated`), which
    stops the round trip or the cleanup. Once the report is final (``run_check`` returned), the
    first is only noted in ``noted``, so that closing the client and writing the report out
    finish (a slow reader of stdout cannot make it lose the report); a second one interrupts.
    """

    def __init__(self) -> None:
        self.finishing = False
        self.noted: str | None = None

    def __call__(self, signum: int, frame: object) -> None:
        name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
        if self.finishing and self.noted is None:
            self.noted = name
            return
        raise _Terminated if name == "SIGTERM" else KeyboardInterrupt


@contextmanager
def _interrupts() -> Iterator[_Interrupts]:
    """For the duration of the block, SIGTERM (a CI job's timeout, ``kill``) and SIGINT act as
    :class:`_Interrupts` says, so that the check cleans up and reports; the previous handlers
    are restored after. SIGINT is taken over only from Python's default handler (an ignored
    SIGINT stays ignored). Signal handlers can only be set in the main thread: elsewhere this
    installs nothing."""
    state = _Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous_term = signal.signal(signal.SIGTERM, state)
    previous_int = None
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous_int = signal.signal(signal.SIGINT, state)
    try:
        yield state
    finally:
        signal.signal(
            signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL
        )
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


#: Exit status of a check stopped by a signal: 128 + the signal's number, as shells report it.
_INTERRUPTED_EXIT = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


def _handle(args: argparse.Namespace) -> int:
    with _interrupts() as interrupts:
        try:
            with client_from_args(args) as client:
                report = run_check(client)
                # The report is final: from here a signal is noted, not raised, until the
                # client is closed and the report written out (flushed: a reader that is slow
                # to take it must not make the report come out half, or not at all).
                interrupts.finishing = True
            code = print_report(report, as_json=args.json)
            sys.stdout.flush()
        except KeyboardInterrupt as exc:  # building the client, or a second signal at the end
            print(f"check interrupted ({_signal_name(exc)})", file=sys.stderr)
            return _INTERRUPTED_EXIT[_signal_name(exc)]
    if interrupts.noted and not report.interrupted:
        print(
            f"check interrupted ({interrupts.noted}) after it had finished; the report is complete",
            file=sys.stderr,
        )
    stopped = report.interrupted or interrupts.noted
    return _INTERRUPTED_EXIT[stopped] if stopped else code


def print_report(report: Any, *, as_json: bool) -> int:
    """Print a command's report (``to_json()`` with ``--json``, else ``to_text()``) and return
    the exit status: 0 when ``report.ok``, else 1."""
    if as_json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(report.to_text())
    return 0 if report.ok else 1


class _HelpWithDefaults(argparse.HelpFormatter):
    """Each option's help ends with its default, when it has one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" not in text and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def register(subparsers: Any) -> None:
    """Add ``check`` to the ``fhir-alliance`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check",
        help="check a FHIR server: capabilities and a tagged create/search/update/delete round trip",
        description=(
            "Read the server's CapabilityStatement, report gaps, and run a round trip with an "
            "Observation and a Consent in the fhir-alliance profiles (synthetic, tagged HTEST and "
            "with a run id; everything created is deleted). Secrets come from environment "
            "variables, never from the command line. Exit status 0 when every step passed."
        ),
        formatter_class=_HelpWithDefaults,
    )
    add_server_options(parser)
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of text"
    )
    parser.set_defaults(handler=_handle)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """The options naming a FHIR server and how to reach it (base URL, auth, TLS, timeouts),
    shared by the commands that talk to one; :func:`client_from_args` reads them."""
    parser.add_argument(
        "--base-url",
        required=True,
        metavar="URL",
        help="FHIR base URL, e.g. https://hapi.fhir.org/baseR4 (required)",
    )
    parser.add_argument(
        "--auth",
        choices=("none", "basic", "bearer", "smart"),
        default="none",
        help="how to authenticate: none, basic (user name and password), bearer (a token), "
        "smart (SMART Backend Services with a private key)",
    )
    parser.add_argument(
        "--token-env",
        default="FHIR_ALLIANCE_TOKEN",
        metavar="VAR",
        help="environment variable holding the bearer token (--auth bearer)",
    )
    parser.add_argument("--username", help="user name for --auth basic")
    parser.add_argument(
        "--password-env",
        default="FHIR_ALLIANCE_PASSWORD",
        metavar="VAR",
        help="environment variable holding the password (--auth basic)",
    )
    parser.add_argument("--client-id", help="SMART client id (--auth smart)")
    parser.add_argument(
        "--private-key", metavar="PEM", help="file with the registered private key (--auth smart)"
    )
    parser.add_argument("--key-id", metavar="KID", help="kid of the registered key (--auth smart)")
    parser.add_argument(
        "--algorithm",
        choices=("RS384", "ES384"),
        default="RS384",
        help="signing algorithm of the key (--auth smart)",
    )
    parser.add_argument(
        "--scope",
        default="system/Observation.cruds system/Consent.cruds",
        help="scopes to ask for (--auth smart)",
    )
    parser.add_argument(
        "--token-url",
        metavar="URL",
        help="token endpoint (--auth smart; default: the one named in "
        "[base]/.well-known/smart-configuration)",
    )
    parser.add_argument(
        "--ca-bundle",
        metavar="PEM",
        help="file of CA certificates to trust for https, for a server whose certificate a "
        "private CA signed (default: $REQUESTS_CA_BUNDLE, else $SSL_CERT_FILE, else the "
        "system's CAs); certificate checks are never switched off",
    )
    parser.add_argument(
        "--timeout",
        default="30",
        type=positive_number,
        metavar="SECONDS",
        help="read timeout of each request, in seconds (connecting waits at most 10)",
    )
    parser.add_argument(
        "--deadline",
        default="120",
        type=positive_number,
        metavar="SECONDS",
        help="most seconds one request may take in all: connecting, sending, reading the answer "
        "and retries",
    )
    parser.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow credentials over plain http to a non-loopback host (never for real data)",
    )
