"""Records → FHIR NDJSON in flat memory, for ``fhir-alliance map --ndjson`` over JSON-lines input.

Two passes over each input file. Pass 1 reads one line at a time, loads each record and keeps only
what the rules across the batch need: a mapper's ``batch_key`` of each record where it offers one
(an observation's id and rupture link), otherwise the record itself (consents and revocations, which
``apply_batch`` folds together, are held whole). Pass 2 reads the files again and maps, validates
and yields one record's resources at a time.

Anything pass 1 cannot settle on its own (a line that is not one whole JSON object, a FHIR
resource, an input over the size cap, a record that does not load, a batch rule broken) returns
``None``, and the caller runs the in-memory path, which reports exactly what it always has.
Standard input cannot be read twice: :func:`spooled_inputs` copies it to a temporary file first.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fhir_alliance.errors import InputError, JsonInputError
from fhir_alliance.jsonio import parse_json
from fhir_alliance.mapping.export import validate_fastest
from fhir_alliance.mapping.registry import RecordMapper, mapper_for_kind

__all__ = ["InputFile", "spooled_inputs", "stream_ndjson"]

_BOM = b"\xef\xbb\xbf"
_JSON_WHITESPACE = b" \t\r\n"


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
        chunk = source.read(min(remaining, 1 << 20))
        if not chunk:
            return
        target.write(chunk)
        remaining -= len(chunk)


class _NotStreamable(Exception):
    """Pass 1 met something only the in-memory path handles or reports."""


def _records(files: Sequence[InputFile], max_bytes: int) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each input's JSON lines as ``(file:index, object)``; raises :class:`_NotStreamable` for
    anything but one JSON object without ``resourceType`` per non-blank line."""
    for file in files:
        try:
            if os.stat(file.path).st_size > max_bytes:
                raise _NotStreamable
            handle = open(file.path, "rb")  # noqa: SIM115 - closed below, also if abandoned
        except OSError:
            raise _NotStreamable from None
        with handle:
            index = 0
            for number, line in enumerate(handle):
                if number > 0 and line.startswith(_BOM):  # only the first line may carry one
                    raise _NotStreamable
                if not line.strip(_JSON_WHITESPACE):
                    continue
                try:
                    item = parse_json(line, source=file.label)
                except JsonInputError:
                    raise _NotStreamable from None
                if not isinstance(item, Mapping) or "resourceType" in item:
                    raise _NotStreamable
                yield f"{file.label}:{index}", item
                index += 1


def _mapper(item: Mapping[str, Any]) -> RecordMapper:
    try:
        return mapper_for_kind(item.get("kind"))
    except InputError:
        raise _NotStreamable from None


def stream_ndjson(
    files: Sequence[InputFile], *, version: str, max_bytes: int
) -> Iterator[bytes] | None:
    """Every record's validated resources, one NDJSON line each; ``None`` when the input needs the
    in-memory path (see the module docstring). All loading and batch checks are done before this
    returns, so an input with an error never yields a line."""
    try:
        folded = _check(files, max_bytes)
    except _NotStreamable:
        return None
    return _lines(files, version, max_bytes, folded)


def _check(files: Sequence[InputFile], max_bytes: int) -> dict[int, dict[str, Any]]:
    """Pass 1: load every record, apply the batch rules on keys; returns, per folding mapper, the
    records it keeps (label → record); everything else is mapped from the input again."""
    mappers: dict[int, RecordMapper] = {}
    keys: dict[int, list[tuple[str, Any]]] = {}
    held: dict[int, list[tuple[str, Any]]] = {}
    for label, item in _records(files, max_bytes):
        mapper = _mapper(item)
        try:
            record = mapper.load(item)
        except InputError:
            raise _NotStreamable from None
        mine = id(mapper)
        mappers[mine] = mapper
        if hasattr(mapper, "apply_batch"):
            held.setdefault(mine, []).append((label, record))
        elif hasattr(mapper, "batch_key"):
            keys.setdefault(mine, []).append((label, mapper.batch_key(record)))
        elif hasattr(mapper, "check_batch"):  # no keys offered: the rules need the records
            held.setdefault(mine, []).append((label, record))
    for mine, labelled_keys in keys.items():
        if mappers[mine].check_batch_keys(labelled_keys):  # type: ignore[attr-defined]
            raise _NotStreamable
    folded: dict[int, dict[str, Any]] = {}
    for mine, labelled in held.items():
        mapper = mappers[mine]
        if hasattr(mapper, "check_batch") and mapper.check_batch(labelled):
            raise _NotStreamable
        if hasattr(mapper, "apply_batch"):
            folded[mine] = dict(mapper.apply_batch(labelled))
    return folded


def _lines(
    files: Sequence[InputFile], version: str, max_bytes: int, folded: dict[int, dict[str, Any]]
) -> Iterator[bytes]:
    """Pass 2: map, validate and serialise one record at a time."""
    for label, item in _records(files, max_bytes):
        mapper = _mapper(item)
        kept = folded.get(id(mapper))
        if kept is None:
            record = mapper.load(item)
        elif label in kept:
            record = kept.pop(label)
        else:
            continue  # folded into another record (a revocation into its consent)
        for resource in mapper.to_fhir(record, version=version):
            validate_fastest(resource, version=version)
            yield orjson.dumps(resource) + b"\n"
