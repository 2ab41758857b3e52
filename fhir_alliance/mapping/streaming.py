"""Records → FHIR NDJSON in flat memory, for ``fhir-alliance map --ndjson`` over JSON-lines input.

One pass over the input: each line is parsed, loaded, mapped, validated and serialised at once,
and its lines go to a spool (a temporary file), not to the output. What the rules across the batch
need is kept on the side: a mapper's ``batch_key`` of each record where it offers one (an
observation's id and rupture link), otherwise the record itself (consents and revocations, which
``apply_batch`` folds together, are held whole and mapped once the batch is folded; their place in
the output is remembered). Only when the whole input has passed every check is the spool handed
out, with the folded records' lines spliced in at their places, so an input with an error never
yields a byte, and each record is parsed and loaded once. For a regular output file
(:func:`stream_ndjson_to_file`) the spool is made beside it and, once complete, replaces it.

Anything the pass cannot settle on its own (a line that is not one whole JSON object, a FHIR
resource, an input over the size cap, a record that does not load or map, a batch rule broken)
returns ``None``, and the caller runs the in-memory path, which reports exactly what it always has.
Standard input cannot be read twice: :func:`spooled_inputs` copies it to a temporary file first.
"""

from __future__ import annotations

import os
import secrets
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson

from fhir_alliance.errors import FhirAllianceError, InputError, JsonInputError
from fhir_alliance.jsonio import parse_json
from fhir_alliance.mapping.export import validate_fastest
from fhir_alliance.mapping.registry import RecordMapper, mapper_for_kind

__all__ = ["InputFile", "spooled_inputs", "stream_ndjson", "stream_ndjson_to_file"]

_BOM = b"\xef\xbb\xbf"
_JSON_WHITESPACE = b" \t\r\n"
_CHUNK = 1 << 20
#: Records loaded before they are mapped, a batch at a time: loading and mapping one record after
#: the other ran about 10% slower than in batches (each step evicts the other's code and data
#: from the CPU caches); a thousand records is a few MB.
_BATCH = 1000


@dataclass(frozen=True)
class InputFile:
    """One input as the user named it (``name``; ``-`` is stdin) and the file holding its bytes."""

    name: str
    path: str

    @property
    def label(self) -> str:
        """What error paths start with: ``stdin`` or the file's name."""
        return "stdin" if self.name == "-" else Path(self.name).name


@contextmanager
def spooled_inputs(names: Sequence[str], *, max_bytes: int) -> Iterator[list[InputFile]]:
    """The inputs as files; stdin (``-``) is copied to a temporary file (at most ``max_bytes`` + 1
    bytes, so an oversized input is still refused by the reader) that is removed afterwards."""
    if "-" not in names:  # no directory to make and remove
        yield [InputFile(name, name) for name in names]
        return
    with tempfile.TemporaryDirectory(prefix="fhir-alliance-map-") as spool_dir:
        files: list[InputFile] = []
        for name in names:
            if name != "-":
                files.append(InputFile(name, name))
                continue
            spool = Path(spool_dir) / f"stdin-{len(files)}"
            with spool.open("wb") as handle:
                _copy_at_most(sys.stdin.buffer, handle, max_bytes + 1)
            files.append(InputFile(name, str(spool)))
        yield files


def _copy_at_most(source: Any, target: Any, limit: int) -> None:
    remaining = limit
    while remaining > 0:
        chunk = source.read(min(remaining, _CHUNK))
        if not chunk:
            return
        target.write(chunk)
        remaining -= len(chunk)


class _NotStreamable(Exception):
    """The pass met something only the in-memory path handles or reports."""


def _records(files: Sequence[InputFile], max_bytes: int) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each input's JSON lines as ``(file:index, object)``; raises :class:`_NotStreamable` for
    anything but one JSON object without ``resourceType`` per non-blank line."""
    loads, dumps, newline = orjson.loads, orjson.dumps, orjson.OPT_APPEND_NEWLINE
    for file in files:
        try:
            if os.stat(file.path).st_size > max_bytes:
                raise _NotStreamable
            handle = open(file.path, "rb")  # noqa: SIM115 - closed below, also if abandoned
        except OSError:
            raise _NotStreamable from None
        source = file.label
        prefix = f"{source}:"
        with handle:
            index = 0
            for number, line in enumerate(handle):
                # Fast and exact: a line that is orjson's own compact serialisation of what orjson
                # reads from it (no duplicate key, no number it would read differently, no escape
                # or space it would write otherwise) means the same to the strict reader, whose
                # per-line cost was about 3% of the command's (issue 10). Any other line (also a
                # blank one, or one with a BOM) goes to the strict reader.
                try:
                    item = loads(line)
                    canonical = dumps(item, option=newline) == line
                except (orjson.JSONDecodeError, orjson.JSONEncodeError):
                    canonical = False
                if not canonical:
                    if number > 0 and line.startswith(_BOM):  # only the first line may carry one
                        raise _NotStreamable
                    if not line.strip(_JSON_WHITESPACE):
                        continue
                    try:
                        item = parse_json(line, source=source)
                    except JsonInputError:
                        raise _NotStreamable from None
                if not isinstance(item, Mapping) or "resourceType" in item:
                    raise _NotStreamable
                yield f"{prefix}{index}", item
                index += 1


class _Slot(NamedTuple):
    """Where a folded mapper's record goes in the output: before the spool's byte ``offset``."""

    offset: int
    label: str
    mapper: RecordMapper


class _Spliced(NamedTuple):
    """The spool's bytes ``[start, end)``: one folded record's lines, written after the pass."""

    start: int
    end: int


def stream_ndjson(
    files: Sequence[InputFile], *, version: str, max_bytes: int
) -> Iterator[bytes] | None:
    """Every record's validated resources as NDJSON (chunks of whole lines, in input order);
    ``None`` when the input needs the in-memory path (see the module docstring). All loading,
    mapping, validation and batch checks are done before this returns, so an input with an error
    never yields a byte."""
    spool = tempfile.TemporaryFile(buffering=_CHUNK)  # noqa: SIM115 - closed by _spliced
    try:
        body_end, places = _map_to_spool(files, version, max_bytes, spool)
    except _NotStreamable:
        spool.close()
        return None
    except BaseException:
        spool.close()
        raise
    return _spliced(spool, body_end, places)


def stream_ndjson_to_file(
    files: Sequence[InputFile], target: str, *, version: str, max_bytes: int
) -> bool | None:
    """:func:`stream_ndjson` written to the regular file ``target`` without copying the spool:
    the pass spools into a temporary file in ``target``'s own directory, which then replaces
    ``target`` (``os.replace``: atomic; ``target`` keeps its permission bits and its owner and
    group). Folded records' lines are spliced into a second temporary file there first. Returns
    ``True`` once written; ``False`` when the input needs the in-memory path; ``None`` when
    ``target`` is not a regular file with one link, belongs to an owner or group this process
    cannot give a new file, or no temporary file can be made beside it (the caller then writes
    into ``target`` itself, as before). Nothing is written to ``target`` and no temporary file is
    left behind unless it returns ``True``."""
    try:
        existing = os.lstat(target)
    except FileNotFoundError:
        mode = owner = None
    except OSError:
        return None
    else:
        if not stat.S_ISREG(existing.st_mode) or existing.st_nlink > 1:
            return None  # a symlink, a device, a pipe, a hard link: written through, as before
        mode = stat.S_IMODE(existing.st_mode)
        owner = (existing.st_uid, existing.st_gid)
    try:
        body_path, spool = _temporary_beside(target, mode, owner)
    except OSError:
        return None
    made = [body_path]
    try:
        with spool:
            try:
                body_end, places = _map_to_spool(files, version, max_bytes, spool)
            except _NotStreamable:
                spool.close()
                os.unlink(body_path)
                return False
            if any(spliced is not None for _, spliced in places):
                # Each folded record's lines go at its place: the output is a copy after all.
                spliced_path, output = _temporary_beside(target, mode, owner)
                made.append(spliced_path)
                with output:
                    spool.flush()
                    for chunk in _spliced(spool, body_end, places):
                        output.write(chunk)
                os.replace(spliced_path, target)
                os.unlink(body_path)
                return True
        os.replace(body_path, target)
        return True
    except BaseException:
        for path in made:
            with suppress(FileNotFoundError):
                os.unlink(path)
        raise


def _temporary_beside(
    target: str, mode: int | None, owner: tuple[int, int] | None = None
) -> tuple[str, IO[bytes]]:
    """A new, empty, hidden file in ``target``'s directory, opened for writing: ``mode``'s
    permission bits, or (``None``) those a new file gets under the umask; ``owner``'s user and
    group, where they differ from a new file's (``PermissionError`` where this process may not
    give them: the file is then removed)."""
    directory, name = os.path.split(os.path.abspath(target))
    for _ in range(100):
        path = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            if owner is not None:
                made = os.fstat(fd)
                if (made.st_uid, made.st_gid) != owner:
                    os.fchown(fd, *owner)  # before the mode: chown may clear set-id bits
            if mode is not None:
                os.fchmod(fd, mode)
            return path, open(fd, "w+b", buffering=_CHUNK)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
    raise FileExistsError(f"no free temporary name beside {target}")


class _Route(NamedTuple):
    """What the pass does with a record kind's records, and where it keeps what the batch rules
    need (one list per mapper, shared by its kinds): ``folded`` records are held and mapped after
    the pass (``apply_batch``); otherwise the record is mapped at once, and its ``batch_key`` goes
    to ``keys`` or, for a mapper with ``check_batch`` but no keys, the record to ``checked``."""

    mapper: RecordMapper
    folded: list[tuple[str, Any]] | None
    keys: list[tuple[str, Any]] | None
    checked: list[tuple[str, Any]] | None


def _routes_for(mapper: RecordMapper, routes: dict[Any, _Route]) -> _Route:
    """The route of ``mapper`` (the one already made for another of its kinds, or a new one)."""
    for route in routes.values():
        if route.mapper is mapper:
            return route
    if hasattr(mapper, "apply_batch"):
        return _Route(mapper, [], None, None)
    if hasattr(mapper, "batch_key"):
        return _Route(mapper, None, [], None)
    return _Route(mapper, None, None, [] if hasattr(mapper, "check_batch") else None)


def _map_to_spool(
    files: Sequence[InputFile], version: str, max_bytes: int, spool: IO[bytes]
) -> tuple[int, list[tuple[_Slot, _Spliced | None]]]:
    """The pass: every record mapped to the spool, the batch rules applied; returns where the
    pass's lines end, the places of the folded mappers' records and where their lines were
    written after that (``None``: folded into another record)."""
    routes: dict[Any, _Route] = {}  # record kind -> route
    slots: list[_Slot] = []
    loaded: list[tuple[RecordMapper, Any]] = []  # loaded, not yet mapped (at most _BATCH)

    def map_loaded() -> None:
        _write_resources(loaded, version, spool)
        loaded.clear()

    for label, item in _records(files, max_bytes):
        kind = item.get("kind")
        route = routes.get(kind) if isinstance(kind, str) else None
        if route is None:
            try:
                route = _routes_for(
                    mapper_for_kind(kind if isinstance(kind, str) else None), routes
                )
            except InputError:
                raise _NotStreamable from None
            if isinstance(kind, str):
                routes[kind] = route
        mapper = route.mapper
        try:
            record = mapper.load(item)
        except InputError:
            raise _NotStreamable from None
        if route.folded is not None:  # mapped once the batch is folded
            route.folded.append((label, record))
            map_loaded()  # everything before it is in the spool: its place is the spool's end
            slots.append(_Slot(spool.tell(), label, mapper))
            continue
        if route.keys is not None:
            # The label is only read when a rule is broken, and then the in-memory path reports
            # it: one shared empty label keeps the kept keys small.
            route.keys.append(("", mapper.batch_key(record)))  # type: ignore[attr-defined]
        elif route.checked is not None:  # no keys offered: the rules need the records
            route.checked.append((label, record))
        loaded.append((mapper, record))
        if len(loaded) >= _BATCH:
            map_loaded()
    map_loaded()
    kept: dict[str, Any] = {}
    for route in {id(r.mapper): r for r in routes.values()}.values():
        mapper = route.mapper
        if route.keys and mapper.check_batch_keys(route.keys):  # type: ignore[attr-defined]
            raise _NotStreamable
        held = route.folded if route.folded is not None else route.checked
        if held and hasattr(mapper, "check_batch") and mapper.check_batch(held):
            raise _NotStreamable
        if route.folded:
            kept.update(mapper.apply_batch(route.folded))  # type: ignore[attr-defined]
    body_end = spool.tell()
    places: list[tuple[_Slot, _Spliced | None]] = []
    for slot in slots:
        record = kept.pop(slot.label, None)
        if record is None:
            places.append((slot, None))  # a revocation, folded into its consent
            continue
        start = spool.tell()
        _write_resources([(slot.mapper, record)], version, spool)
        places.append((slot, _Spliced(start, spool.tell())))
    return body_end, places


def _write_resources(
    loaded: Sequence[tuple[RecordMapper, Any]], version: str, spool: IO[bytes]
) -> None:
    """Map, validate and serialise ``loaded`` records to the spool, in order."""
    write = spool.write
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    try:
        for mapper, record in loaded:
            for resource in mapper.to_fhir(record, version=version):
                validate_fastest(resource, version=version)
                write(dumps(resource, option=newline))
    except FhirAllianceError:
        raise _NotStreamable from None


def _spliced(
    spool: IO[bytes], body_end: int, places: list[tuple[_Slot, _Spliced | None]]
) -> Iterator[bytes]:
    """The spool in input order: the pass's lines with each folded record's lines at its place."""
    with spool:
        position = 0
        for slot, spliced in places:
            yield from _copy(spool, position, slot.offset)
            position = slot.offset
            if spliced is not None:
                yield from _copy(spool, spliced.start, spliced.end)
        yield from _copy(spool, position, body_end)


def _copy(spool: IO[bytes], start: int, end: int) -> Iterator[bytes]:
    spool.seek(start)
    remaining = end - start
    while remaining > 0:
        chunk = spool.read(min(remaining, _CHUNK))
        if not chunk:
            return
        yield chunk
        remaining -= len(chunk)
