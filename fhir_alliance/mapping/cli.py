"""``fhir-alliance map``: our JSON records → FHIR resources, or FHIR resources → our JSON records.

The direction is detected per input item: an object with ``resourceType`` is FHIR, an object with
``kind`` is one of our records. Every record kind and resource type is dispatched through
:mod:`fhir_alliance.mapping.registry`, so the command knows no record kind by name. Resources are
validated against base FHIR of the chosen version before they are written.

With ``--ndjson``, JSON-lines records are streamed in one pass in flat memory
(:mod:`fhir_alliance.mapping.streaming`); everything else is read and checked whole.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from fhir_alliance.errors import FhirAllianceError, InputError, Issue
from fhir_alliance.jsonio import DEFAULT_MAX_BYTES, parse_json_documents, read_input
from fhir_alliance.mapping.collection import bundle_resources, collection_bundle
from fhir_alliance.mapping.export import validate_fastest
from fhir_alliance.mapping.registry import (
    FHIR_VERSIONS,
    RecordMapper,
    mapper_for_kind,
    mapper_for_resource_type,
)
from fhir_alliance.mapping.streaming import (
    InputFile,
    spooled_inputs,
    stream_ndjson,
    stream_ndjson_to_file,
)
from fhir_alliance.stdout import flush_all, write_all

__all__ = [
    "MAX_BUNDLE_ENTRIES",
    "MAX_INPUT_BYTES",
    "map_items",
    "paused_gc",
    "read_items",
    "register",
    "resource_groups",
]

#: Largest input read from one file or from stdin; more is an error, never silently cut.
MAX_INPUT_BYTES = DEFAULT_MAX_BYTES

#: Most resources written as one Bundle (or records as one JSON array). A Bundle is one JSON value,
#: so it is held whole in memory before it is written; past this size ``map`` refuses and points
#: to ``--ndjson`` (one resource per line).
MAX_BUNDLE_ENTRIES = 20_000


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "map",
        help="convert our JSON records to FHIR resources and back",
        description=__doc__,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE",
        help="JSON files: one record or resource, a list, a Bundle, or NDJSON ('-' reads stdin)",
    )
    parser.add_argument(
        "--fhir-version",
        choices=FHIR_VERSIONS,
        default=FHIR_VERSIONS[0],
        help="FHIR version to write (default %(default)s)",
    )
    parser.add_argument(
        "--ndjson",
        action="store_true",
        help="write one item per line instead of a Bundle (FHIR) or a JSON array (records); "
        f"a Bundle or array is held whole in memory and limited to {MAX_BUNDLE_ENTRIES:,} items",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="FHIR base the resources will live at: Bundle fullUrls become URL/Type/id "
        "(default: urn:uuid fullUrls, references inside the Bundle rewritten to them)",
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    parser.set_defaults(handler=_run)


def _items(documents: list[Any], source: str) -> list[Any]:
    """The items of one input: an array's elements, a Bundle's resources, or the values as given."""
    if len(documents) != 1:
        return documents
    data = documents[0]
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping) and data.get("resourceType") == "Bundle":
        return bundle_resources(data, source=source)
    return [data]


def read_items(paths: Iterable[str], *, max_bytes: int | None = None) -> list[tuple[str, Any]]:
    """Every input item with a label for errors: ``file:index``. Files and stdin (``-``) are read
    strictly (:mod:`fhir_alliance.jsonio`); more than ``max_bytes`` (default
    :data:`MAX_INPUT_BYTES`) from one input is an error."""
    limit = MAX_INPUT_BYTES if max_bytes is None else max_bytes
    items: list[tuple[str, Any]] = []
    for name in paths:
        items += _labelled(name, read_input(name, max_bytes=limit))
    return items


def _read_files(files: Iterable[InputFile], *, max_bytes: int) -> list[tuple[str, Any]]:
    """:func:`read_items` over inputs already spooled to files (stdin still named ``stdin``)."""
    items: list[tuple[str, Any]] = []
    for file in files:
        if file.name == "-":
            with open(file.path, "rb") as spool:
                data = read_input("-", max_bytes=max_bytes, stdin=spool)
        else:
            data = read_input(file.name, max_bytes=max_bytes)
        items += _labelled(file.name, data)
    return items


def _labelled(name: str, data: bytes) -> list[tuple[str, Any]]:
    source = "stdin" if name == "-" else name
    documents = parse_json_documents(data, source=source)
    label = "stdin" if name == "-" else Path(name).name
    return [(f"{label}:{i}", item) for i, item in enumerate(_items(documents, source))]


def _prefixed(error: FhirAllianceError, label: str) -> list[Issue]:
    return [
        Issue(path=f"{label}.{i.path}" if i.path else label, message=i.message, code=i.code)
        for i in error.issues
    ]


def map_items(items: list[tuple[str, Any]], *, version: str) -> tuple[str, list[dict[str, Any]]]:
    """Map every item; returns the direction (``"fhir"`` or ``"records"``) and the output items.

    All errors of all items are collected into one :class:`InputError`.
    """
    is_fhir = [isinstance(item, Mapping) and "resourceType" in item for _, item in items]
    if any(is_fhir) and not all(is_fhir):
        message = "mixes FHIR resources and records; give one direction per run"
        raise InputError(message, issues=[Issue(path="(input)", message=message)])
    if items and all(is_fhir):
        return "records", _from_fhir(items)
    return "fhir", _to_fhir(items, version)


def _to_fhir(items: list[tuple[str, Any]], version: str) -> list[dict[str, Any]]:
    return [resource for _, group in resource_groups(items, version=version) for resource in group]


def resource_groups(
    items: list[tuple[str, Any]], *, version: str
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Load and check every record first (all errors together, as one :class:`InputError`,
    before anything is yielded), then yield the validated resources of one record at a time."""
    issues: list[Issue] = []
    loaded: list[tuple[str, RecordMapper, Any]] = []
    for label, item in items:
        try:
            kind = item.get("kind") if isinstance(item, Mapping) else None
            # A kind that is not a string (an array, an object) is unknown, not a crash.
            mapper = mapper_for_kind(kind if isinstance(kind, str) else None)
            loaded.append((label, mapper, mapper.load(item)))
        except InputError as exc:
            issues += _prefixed(exc, label)
    checkers = {id(m): m for _, m, _ in loaded if hasattr(m, "check_batch")}
    for mapper in checkers.values():
        mine = [(label, record) for label, m, record in loaded if m is mapper]
        issues += mapper.check_batch(mine)
    if issues:
        raise InputError.from_issues(issues)
    # A mapper may fold records into others (a consent revocation is applied to its consent).
    for mapper in {id(m): m for _, m, _ in loaded if hasattr(m, "apply_batch")}.values():
        mine = [(label, record) for label, m, record in loaded if m is mapper]
        kept = dict(mapper.apply_batch(mine))  # label -> record; folded records are left out
        loaded = [
            (label, m, kept[label] if m is mapper else record)
            for label, m, record in loaded
            if m is not mapper or label in kept
        ]
    return _mapped(loaded, version)


def _mapped(
    loaded: list[tuple[str, RecordMapper, Any]], version: str
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    loaded.reverse()  # popped from the end: each record is released once it is mapped
    while loaded:
        label, mapper, record = loaded.pop()
        resources = mapper.to_fhir(record, version=version)
        for resource in resources:
            validate_fastest(resource, version=version)
        yield label, resources


def _from_fhir(items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[int, tuple[RecordMapper, list[Mapping[str, Any]]]] = {}
    for label, item in items:
        try:
            mapper = mapper_for_resource_type(item.get("resourceType"))
        except FhirAllianceError as exc:
            raise InputError(exc.message, issues=_prefixed(exc, label)) from None
        groups.setdefault(id(mapper), (mapper, []))[1].append(item)
    out: list[dict[str, Any]] = []
    for mapper, resources in groups.values():
        out += [mapper.dump(record) for record in mapper.from_fhir(resources)]
    return out


def _write(lines: Iterator[bytes], target: str | None) -> None:
    if target is None:
        for line in lines:
            write_all(sys.stdout.buffer, line)
        flush_all(sys.stdout)
        return
    with open(target, "wb") as handle:
        for line in lines:
            handle.write(line)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cycle collector for one command run. ``map`` holds every record and resource
    it builds, and each full collection walks all of them: with it running, the rate at 10,000
    records fell to about half the rate at 1,000 (benchmarks/bench_scaling.py). Reference counting
    still frees everything that is not a cycle; the collector is restored afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _run(args: argparse.Namespace) -> int:
    with paused_gc():
        return _map_and_write(args)


def _map_and_write(args: argparse.Namespace) -> int:
    if not args.ndjson:
        return _map_in_memory(args, read_items(args.inputs))
    with spooled_inputs(args.inputs, max_bytes=MAX_INPUT_BYTES) as files:
        # JSON-lines records to FHIR NDJSON: one pass over the files, in flat memory.
        if args.output is not None:
            # A regular output file: the spool is made beside it and becomes it (no copy).
            written = stream_ndjson_to_file(
                files, args.output, version=args.fhir_version, max_bytes=MAX_INPUT_BYTES
            )
            if written is False:
                return _map_in_memory(args, _read_files(files, max_bytes=MAX_INPUT_BYTES))
            if written:
                return 0
        lines = stream_ndjson(files, version=args.fhir_version, max_bytes=MAX_INPUT_BYTES)
        if lines is not None:
            _write(lines, args.output)
            return 0
        return _map_in_memory(args, _read_files(files, max_bytes=MAX_INPUT_BYTES))


def _map_in_memory(args: argparse.Namespace, items: list[tuple[str, Any]]) -> int:
    """Everything read and loaded at once: Bundles, arrays, FHIR input, and every input with an
    error (so its messages are those of one whole-batch check)."""
    if args.ndjson and not any(isinstance(i, Mapping) and "resourceType" in i for _, i in items):
        # Records to FHIR, one line each: no resource is held; the input and the loaded records
        # are (the checks across records need them all before anything is written).
        groups = resource_groups(items, version=args.fhir_version)
        del items
        _write((orjson.dumps(r) + b"\n" for _, group in groups for r in group), args.output)
        return 0
    direction, output = map_items(items, version=args.fhir_version)
    if not args.ndjson and len(output) > MAX_BUNDLE_ENTRIES:
        what = "Bundle" if direction == "fhir" else "JSON array"
        message = (
            f"{len(output):,} items: a {what} holds at most {MAX_BUNDLE_ENTRIES:,} (it is built "
            "whole in memory); use --ndjson to write one item per line"
        )
        raise InputError(message, issues=[Issue(path="(output)", message=message)])
    if args.ndjson:
        lines: Iterator[bytes] = (orjson.dumps(item) + b"\n" for item in output)
    elif direction == "fhir":
        bundle = collection_bundle(output, base_url=args.base_url)
        lines = iter([orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"])
    else:
        lines = iter([orjson.dumps(output, option=orjson.OPT_INDENT_2) + b"\n"])
    _write(lines, args.output)
    return 0
