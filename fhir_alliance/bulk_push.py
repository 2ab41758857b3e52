"""``fhir-alliance push --bulk DIR``: hand the files of ``export --bulk`` to a FHIR server.

The manifest and every file are checked first (each file is named by the manifest, lies in DIR,
holds one resource of the declared type with an id per line, as many as the manifest counts);
nothing is sent unless all of it is right. Then the server's CapabilityStatement decides:

- **``$import`` advertised** (``rest.operation`` or a resource's ``operation`` named ``import``): the
  server is asked to fetch the files by URL (:mod:`fhir_alliance.client.bulk_import`), either from
  ``--files-url`` where DIR is already published, or from a temporary read-only HTTP server this
  command runs for the duration (``--serve-on``; only the manifest's files, under a random path,
  no listing). The command waits for the import to finish and reports the server's counts.
- **otherwise** it says so and sends the same resources as transaction Bundles of ``PUT``s to their
  ids, streaming each file (at most ``--bundle-size`` resources in memory), retrying transient
  faults as the client does. ``--no-fallback`` makes a missing ``$import`` an error.

Exit status 0 when every resource is known to have arrived, 1 otherwise: on the ``$import`` path
that needs the server's count for every type (the proposal makes counts optional; a type without
one is reported ``unconfirmed``, not ok) and, when this command serves the files, every file
fetched. The report names files, types and counts, never resource content, patient data, URLs
with tokens, or server ``diagnostics``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import orjson

from fhir_alliance.errors import InputError, Issue, ServerError

if TYPE_CHECKING:
    from fhir_alliance.client import FhirClient

__all__ = [
    "BulkFile",
    "PushReport",
    "push_transactions",
    "check_files",
    "push_bulk",
    "read_manifest",
    "register",
]

log = logging.getLogger("fhir_alliance.bulk_push")

MANIFEST = "manifest.json"
#: Resources per transaction Bundle on the fallback path (the client's own bound is 1,000).
DEFAULT_BUNDLE_SIZE = 100
#: Problems listed before the check of the files stops.
MAX_ISSUES = 20
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.ndjson")
#: Resource types sent after all others on the fallback path: they point at the others.
_SENT_LAST = ("Provenance", "AuditEvent")


@dataclass(frozen=True, slots=True)
class BulkFile:
    """One NDJSON file of the manifest: its resource type, where it is, how many resources."""

    type: str
    path: Path
    count: int
    #: The file as :func:`check_files` read it (device, inode, size, mtime): what is sent must be
    #: that file, unchanged; None before the check.
    checked: os.stat_result | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class PushReport:
    """What ``push --bulk`` did: which path, per-type counts, failures (no resource content)."""

    mode: str  # "import" or "transaction"
    import_advertised: bool
    files: list[BulkFile]
    imported: dict[str, int] = field(default_factory=dict)
    created: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    bundles: int = 0
    import_details: dict[str, Any] | None = None

    @property
    def expected(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for f in self.files:
            totals[f.type] = totals.get(f.type, 0) + f.count
        return totals

    @property
    def unconfirmed(self) -> dict[str, int]:
        """On the ``$import`` path, the types sent (with how many) that the server gave no count
        for: whether they arrived is not known. The proposal makes output counts optional."""
        if self.mode != "import":
            return {}
        return {t: n for t, n in self.expected.items() if n and t not in self.imported}

    @property
    def ok(self) -> bool:
        if self.errors or any(self.failed.values()):
            return False
        if self.mode == "transaction":
            done = {
                t: self.created.get(t, 0) + self.updated.get(t, 0)
                for t in self.created.keys() | self.updated.keys()
            }
            return all(done.get(t, 0) == n for t, n in self.expected.items())
        # A type the server gave no count for is not known to have arrived: not ok.
        return all(self.imported.get(t, 0) == n for t, n in self.expected.items())

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "ok": self.ok,
            "mode": self.mode,
            "importAdvertised": self.import_advertised,
            "files": [{"file": f.name, "type": f.type, "count": f.count} for f in self.files],
            "expected": self.expected,
            "failed": self.failed,
            "errors": self.errors,
        }
        if self.mode == "import":
            data["imported"] = self.imported
            data["unconfirmed"] = self.unconfirmed
            data["import"] = self.import_details
        else:
            data |= {"created": self.created, "updated": self.updated, "bundles": self.bundles}
        return data

    def to_text(self) -> str:
        total = sum(self.expected.values())
        if self.mode == "import":
            done = ", ".join(f"{n} {t}" for t, n in sorted(self.imported.items())) or "no counts"
            lines = [f"$import: the server reports {done} imported of {total} sent"]
        else:
            parts = [
                f"{self.created.get(t, 0) + self.updated.get(t, 0)} {t}" for t in self.expected
            ]
            lines = [
                f"transaction Bundles: {', '.join(parts) or 'nothing'} written of {total} "
                f"({sum(self.created.values())} created, {sum(self.updated.values())} updated, "
                f"{self.bundles} Bundles)"
            ]
        if any(self.failed.values()):
            lines.append(
                "failed: " + ", ".join(f"{n} {t}" for t, n in sorted(self.failed.items()) if n)
            )
        if self.unconfirmed:
            lines.append(
                "unconfirmed: the server gave no count for "
                + ", ".join(f"{t} ({n} sent)" for t, n in sorted(self.unconfirmed.items()))
                + "; whether they were imported is not known"
            )
        lines += [f"error: {e['message']}" for e in self.errors]
        if self.ok:
            lines.append("ok")
        elif self.unconfirmed and not self.errors and not any(self.failed.values()):
            lines.append("NOT confirmed that everything arrived")
        else:
            lines.append("NOT everything arrived")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- manifest and files


def _problem(path: str, message: str) -> InputError:
    return InputError(f"{path}: {message}", issues=[Issue(path=path, message=message)])


def read_manifest(directory: Path) -> list[BulkFile]:
    """The files named by ``DIR/manifest.json`` (as ``export --bulk`` writes it), each checked to
    be a regular file directly inside ``directory``; InputError naming the manifest field else."""
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise _problem("--bulk", "not a directory")
    try:
        data = orjson.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        raise _problem(
            "--bulk", f"no {MANIFEST} in the directory (write it with export --bulk)"
        ) from None
    except OSError:
        raise _problem(MANIFEST, "cannot be read") from None
    except orjson.JSONDecodeError:
        raise _problem(MANIFEST, "is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("output"), list):
        raise _problem(f"{MANIFEST}.output", "missing or not a list (not a Bulk Data manifest)")
    root = directory.resolve()
    files: list[BulkFile] = []
    seen: set[str] = set()
    for i, entry in enumerate(data["output"]):
        where = f"{MANIFEST}.output[{i}]"
        if not isinstance(entry, dict):
            raise _problem(where, "not an object")
        rtype, url, count = entry.get("type"), entry.get("url"), entry.get("count")
        if not isinstance(rtype, str) or not _RESOURCE_TYPE.fullmatch(rtype):
            raise _problem(f"{where}.type", "not a resource type")
        if not isinstance(url, str) or not url:
            raise _problem(f"{where}.url", "missing")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise _problem(f"{where}.count", "not a whole number")
        if isinstance(count, int) and count < 0:
            raise _problem(f"{where}.count", "negative")
        # The URL's last segment names the file in DIR (the directory may have been moved since).
        name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        if not _FILE_NAME.fullmatch(name):
            raise _problem(f"{where}.url", "does not end in a plain file name ending .ndjson")
        if name in seen:
            raise _problem(f"{where}.url", "names a file another entry names")
        seen.add(name)
        path = directory / name
        try:
            inside = path.resolve().parent == root
        except OSError:
            inside = False
        if not inside:
            raise _problem(f"{where}.url", "the file lies outside the directory")
        if not path.is_file():
            raise _problem(f"{where}.url", f"{name} is missing from the directory")
        files.append(BulkFile(type=rtype, path=path, count=-1 if count is None else count))
    if not files:
        raise _problem(f"{MANIFEST}.output", "lists no file: nothing to push")
    return files


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _changed(name: str) -> InputError:
    return _problem(name, "changed after it was checked (rewritten or replaced): nothing more sent")


def _lines(path: Path, checked: os.stat_result | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every non-blank line, read one at a time; with ``checked``, the
    file must still be the one checked (InputError otherwise)."""
    with path.open("rb") as handle:
        if checked is not None and _identity(os.fstat(handle.fileno())) != _identity(checked):
            raise _changed(path.name)
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


def check_files(files: Sequence[BulkFile]) -> list[BulkFile]:
    """Read every file once: each line one JSON resource of the file's type with an id, as many
    as the manifest counts. Returns the files with their counted sizes; InputError listing the
    problems (file and line, never content) otherwise."""
    issues: list[Issue] = []
    counted: list[BulkFile] = []
    for f in files:
        n = 0
        with f.path.open("rb") as handle:
            before = os.fstat(handle.fileno())
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                n += 1
                where = f"{f.name}:{number}"
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError:
                    issues.append(Issue(path=where, message="not JSON"))
                else:
                    if not isinstance(resource, dict) or resource.get("resourceType") != f.type:
                        issues.append(Issue(path=where, message=f"not a {f.type}"))
                    elif not isinstance(resource.get("id"), str) or not resource["id"]:
                        issues.append(Issue(path=where, message="no id"))
                if len(issues) >= MAX_ISSUES:
                    break
            after = os.stat(f.path)  # by name: also a file replaced while it was read
        if len(issues) >= MAX_ISSUES:
            break
        if _identity(after) != _identity(before):
            issues.append(Issue(path=f.name, message="changed while it was being checked"))
        if f.count >= 0 and n != f.count:
            issues.append(
                Issue(path=f.name, message=f"holds {n} resources, the manifest says {f.count}")
            )
        counted.append(BulkFile(type=f.type, path=f.path, count=n, checked=before))
    if issues:
        raise InputError(
            f"the bulk files do not match their manifest ({len(issues)} problems"
            f"{' at least' if len(issues) >= MAX_ISSUES else ''})",
            issues=issues,
        )
    return counted


# ---------------------------------------------------------------------------- serving the files


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` or ``[v6]:PORT`` → (host, port); port 0 picks a free one."""
    host, port_text = text, "0"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") or "0"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    # ASCII digits only: a superscript passes isdigit() but not int().
    if not host or not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise _problem("--serve-on", "expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    from fhir_alliance.client.bulk_import import numeric_address

    address = numeric_address(host)
    return address is not None and address.is_loopback


def _is_wildcard(host: str) -> bool:
    from fhir_alliance.client.bulk_import import numeric_address

    address = numeric_address(host)
    return address is not None and address.is_unspecified


# ---------------------------------------------------------------------------- fallback


def _send_order(files: Sequence[BulkFile]) -> list[BulkFile]:
    return sorted(files, key=lambda f: f.type in _SENT_LAST)


def push_transactions(
    client: FhirClient, files: Sequence[BulkFile], report: PushReport, *, bundle_size: int
) -> None:
    """Send every resource as ``PUT [type]/[id]`` in transaction Bundles of ``bundle_size``,
    streaming each file; counts go into ``report``. A failed Bundle (after the client's retries
    of transient faults) fails its resources and the next Bundles are still sent."""
    from fhir_alliance.client.bundles import BundleRequest
    from fhir_alliance.errors import loggable_outcome

    def send(f: BulkFile, chunk: list[BundleRequest], first_line: int, last_line: int) -> None:
        outcomes = client.transaction(chunk, chunk_size=len(chunk))
        report.bundles += 1
        chunk_error: dict[str, Any] | None = None
        for outcome in outcomes:
            if outcome.ok:
                bucket = report.created if outcome.status == 201 else report.updated
                bucket[f.type] = bucket.get(f.type, 0) + 1
                continue
            report.failed[f.type] = report.failed.get(f.type, 0) + 1
            error = outcome.error
            entry = {
                "file": f.name,
                "lines": f"{first_line}-{last_line}",
                "status": outcome.status,
                "message": f"{f.name} lines {first_line}-{last_line}: "
                + (error.message if error is not None else f"HTTP {outcome.status}"),
                "issues": loggable_outcome(outcome.outcome),
            }
            if chunk_error != entry:  # a transaction fails whole: one line per Bundle
                chunk_error = entry
                report.errors.append(entry)
        chunk.clear()

    for f in _send_order(files):
        chunk: list[BundleRequest] = []
        first = last = 0
        for number, line in _lines(f.path, f.checked):
            if not chunk:
                first = number
            last = number
            chunk.append(BundleRequest.put(orjson.loads(line)))
            if len(chunk) >= bundle_size:
                send(f, chunk, first, last)
        if chunk:
            send(f, chunk, first, last)


# ---------------------------------------------------------------------------- the command


def _files_url_for(base: str, files: Sequence[BulkFile]) -> dict[str, str]:
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _problem("--files-url", "expected an http(s) URL where DIR is published")
    if parts.query or parts.fragment:
        raise _problem("--files-url", "a base URL has no query or fragment")
    return {f.name: f"{base.rstrip('/')}/{quote(f.name)}" for f in files}


def push_bulk(args: argparse.Namespace) -> PushReport:
    """Run the command: check the files, then ``$import`` or transaction Bundles."""
    from fhir_alliance.check import client_from_args
    from fhir_alliance.client.bulk_import import (
        ImportInput,
        ImportPolling,
        run_import,
        serve_files,
    )

    files = check_files(read_manifest(Path(args.bulk)))
    if args.files_url:
        _files_url_for(args.files_url, files)  # bad options fail before anything is sent
    if args.serve_on:
        host, _ = parse_host_port(args.serve_on)
        if _is_wildcard(host):
            raise _problem(
                "--serve-on",
                "give the address the FHIR server reaches this machine at, not a wildcard",
            )
        if not _is_loopback(host) and not args.allow_insecure_http:
            raise _problem(
                "--serve-on",
                "the files would travel over plain http to the network; publish them over "
                "https and give --files-url, or add --allow-insecure-http (never for real data)",
            )
    with client_from_args(args) as client:
        caps = client.capabilities()
        advertised = caps.supports_operation("import")
        if advertised and not args.no_import:
            if not args.files_url and not args.serve_on and not client.base.is_loopback:
                # The default serves on this machine's loopback: a server on another host would
                # be told 127.0.0.1 URLs it cannot fetch (or fetch whatever listens on its own).
                raise InputError(
                    "the FHIR server's base URL is not a loopback address, so it cannot fetch "
                    "files served on this machine's 127.0.0.1: give --files-url (where DIR is published over https) or "
                    "--serve-on HOST:PORT (an address the server reaches); or --no-import"
                )
            report = PushReport(mode="import", import_advertised=True, files=files)
            polling = ImportPolling(timeout=args.import_timeout)

            def run(urls: dict[str, str], source: str) -> None:
                inputs = [ImportInput(type=f.type, url=urls[f.name]) for f in files]
                outcome = run_import(client, inputs, input_source=source, polling=polling)
                report.imported = outcome.imported
                report.failed = outcome.failed
                report.import_details = {
                    "statusUrl": outcome.status_url,
                    "transactionTime": outcome.transaction_time,
                    "polls": outcome.polls,
                    "errorEntries": outcome.error_entries,
                }
                if outcome.error_entries:
                    known = "" if outcome.error_counts_known else " (some without a count)"
                    report.errors.append(
                        {
                            "message": f"the server reports errors for {outcome.error_entries} "
                            f"input files{known}; its error files hold the OperationOutcomes"
                        }
                    )

            if args.files_url:
                run(_files_url_for(args.files_url, files), args.input_source or args.files_url)
                return report
            host, port = parse_host_port(args.serve_on or "127.0.0.1:0")
            checked = {f.name: f.checked for f in files if f.checked is not None}
            with serve_files(
                {f.name: f.path for f in files}, host=host, port=port, checked=checked
            ) as served:
                run(served.urls, args.input_source or served.origin)
            # Read once the server has stopped: every download that completed is counted.
            unfetched = [f.name for f in files if not served.fetched.get(f.name)]
            report.import_details = (report.import_details or {}) | {
                "filesFetched": len(files) - len(unfetched)
            }
            if unfetched:
                # Whatever the server's report says, it cannot have imported a file it never read.
                report.errors.append(
                    {
                        "message": f"the server never fetched {', '.join(unfetched)} from the "
                        "file server this command ran, so it cannot have imported "
                        + ("them" if len(unfetched) > 1 else "it")
                    }
                )
            return report
        if args.no_import:
            print("sending transaction Bundles (--no-import)", file=sys.stderr)
        elif args.no_fallback:
            raise ServerError(
                "the server does not advertise $import in its CapabilityStatement "
                "(--no-fallback: no transaction Bundles sent)"
            )
        else:
            print(
                "the server does not advertise $import in its CapabilityStatement; "
                "sending transaction Bundles of PUTs instead",
                file=sys.stderr,
            )
        if not caps.supports_transaction:
            raise ServerError(
                "the server declares no transaction interaction: nothing sent"
                + ("" if advertised else " (neither $import nor transaction Bundles are offered)")
            )
        report = PushReport(mode="transaction", import_advertised=advertised, files=files)
        push_transactions(client, files, report, bundle_size=args.bundle_size)
        return report


def _run(args: argparse.Namespace) -> int:
    from fhir_alliance.check import print_report

    return print_report(push_bulk(args), as_json=args.json)


def _bundle_size(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError("a whole number from 1 to 1000")
    return int(text)


def register(subparsers: Any) -> None:
    from fhir_alliance.check import add_server_options, positive_number

    parser = subparsers.add_parser(
        "push",
        help="send export --bulk files to a FHIR server: $import where offered, else transactions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bulk",
        required=True,
        metavar="DIR",
        help="directory written by export --bulk (manifest.json and NDJSON files)",
    )
    add_server_options(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--files-url",
        metavar="URL",
        help="where DIR is already published for the server to fetch (URL/<Type>.ndjson); "
        "default: serve DIR from this machine while the import runs",
    )
    where.add_argument(
        "--serve-on",
        metavar="HOST:PORT",
        help="address to serve the files on for $import, as the FHIR server reaches it "
        "(default 127.0.0.1 and a free port; other than loopback needs --allow-insecure-http)",
    )
    parser.add_argument(
        "--input-source",
        metavar="URI",
        help="$import inputSource: a URI naming where this data comes from (default: the files' "
        "base URL)",
    )
    parser.add_argument(
        "--import-timeout",
        type=positive_number,
        default=3600.0,
        metavar="SECONDS",
        help="most seconds to wait for $import to finish (default %(default)g)",
    )
    fallback = parser.add_mutually_exclusive_group()
    fallback.add_argument(
        "--no-fallback",
        action="store_true",
        help="fail if the server does not advertise $import (no transaction Bundles)",
    )
    fallback.add_argument(
        "--no-import",
        action="store_true",
        help="send transaction Bundles even where the server advertises $import",
    )
    parser.add_argument(
        "--bundle-size",
        type=_bundle_size,
        default=DEFAULT_BUNDLE_SIZE,
        metavar="N",
        help="resources per transaction Bundle on the fallback path (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_run)
