"""Reading bulk intake files for ``fhir-alliance load``: JSON (one record or a list of records) and
NDJSON (one record a line), each record paired with where it came from (``file:line``), so that a
bad record can be reported by its place and field path without echoing its content."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_alliance.errors import FhirAllianceError, InputError
from fhir_alliance.jsonio import DEFAULT_MAX_BYTES, parse_json, read_input

if TYPE_CHECKING:
    from fhir_alliance_service.store.interface import Store

__all__ = [
    "MAX_LINE_BYTES",
    "NDJSON_SUFFIXES",
    "FileFormatError",
    "LoadSummary",
    "SourcedRecord",
    "load_files",
    "read_records",
]

#: Files read one record a line; anything else is read as one JSON document.
NDJSON_SUFFIXES = frozenset({".ndjson", ".jsonl"})

#: Longest NDJSON line (without its newline): one record, capped like a whole ``.json`` file.
MAX_LINE_BYTES = DEFAULT_MAX_BYTES

_WHITESPACE = " \t\n\r"


class FileFormatError(ValueError):
    """A file that is not JSON/NDJSON of records; ``str(exc)`` is ``file:line: what is wrong``."""


@dataclass(frozen=True, slots=True)
class SourcedRecord:
    """One record payload and the place it was read from."""

    path: str
    line: int
    payload: Any

    @property
    def place(self) -> str:
        return f"{self.path}:{self.line}"


def read_records(path: Path, *, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[SourcedRecord]:
    """Yield the records of one file in order, parsed strictly (:mod:`fhir_alliance.jsonio`:
    duplicate keys, NaN or absurd numbers are errors). NDJSON is streamed line by line, a line
    longer than ``max_line_bytes`` being an error found after reading no more than that; a JSON
    document is read whole (up to ``jsonio.DEFAULT_MAX_BYTES``). Raises :class:`FileFormatError`
    naming ``file:line`` when the file cannot be read; the records already yielded stay yielded."""
    if path.suffix.lower() in NDJSON_SUFFIXES:
        yield from _ndjson(path, max_line_bytes)
    else:
        yield from _json_document(path)


def _ndjson(path: Path, max_line_bytes: int) -> Iterator[SourcedRecord]:
    try:
        with path.open("rb") as handle:
            number = 0
            # At most the cap and its newline at a time: an endless line is never held whole.
            while line := handle.readline(max_line_bytes + 1):
                number += 1
                if len(line.removesuffix(b"\n")) > max_line_bytes:
                    raise FileFormatError(
                        f"{path}:{number}: line longer than {max_line_bytes} bytes "
                        "(one record a line; the cap of a .json file)"
                    )
                if not line.strip():
                    continue
                try:
                    payload = parse_json(line, source=str(path))
                except InputError as exc:
                    reason = exc.issues[0].message if exc.issues else exc.message
                    raise FileFormatError(f"{path}:{number}: {reason}") from None
                yield SourcedRecord(str(path), number, payload)
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot read the file ({type(exc).__name__})") from None


def _json_document(path: Path) -> Iterator[SourcedRecord]:
    """One record, or a list of records, each located by the line its value starts on."""
    try:
        data = read_input(str(path))
    except InputError as exc:
        raise FileFormatError(exc.message) from None
    value = _parsed(data, str(path))
    if not isinstance(value, list):
        yield SourcedRecord(str(path), _first_line(data), value)
        return
    for line, payload in zip(_element_lines(data.decode("utf-8-sig")), value, strict=True):
        yield SourcedRecord(str(path), line, payload)


def _parsed(data: bytes, source: str) -> Any:
    try:
        return parse_json(data, source=source)
    except InputError as exc:
        raise FileFormatError(exc.message) from None


def _first_line(data: bytes) -> int:
    stripped = data.removeprefix(b"\xef\xbb\xbf")
    return stripped[: len(stripped) - len(stripped.lstrip())].count(b"\n") + 1


def _element_lines(text: str) -> list[int]:
    """The line each element of a top-level JSON array starts on (the text is known valid)."""
    decoder = json.JSONDecoder()
    lines = _LineCounter(text)
    position = _skip(text, _skip(text, 0) + 1)  # past "["
    starts: list[int] = []
    while position < len(text) and text[position] != "]":
        starts.append(lines.line_at(position))
        _, end = decoder.raw_decode(text, position)
        position = _skip(text, end)
        if text[position] == ",":
            position = _skip(text, position + 1)
    return starts


def _skip(text: str, position: int) -> int:
    while position < len(text) and text[position] in _WHITESPACE:
        position += 1
    return position


class _LineCounter:
    """Line numbers of increasing positions in one text, counted once (large lists stay linear)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._position = 0
        self._line = 1

    def line_at(self, position: int) -> int:
        self._line += self._text.count("\n", self._position, position)
        self._position = position
        return self._line


# -- loading into the store ---------------------------------------------------------------------

#: A leading record index in an issue path: ``3.patient``, ``[3].patient`` or ``3``.
_INDEXED_PATH = re.compile(r"^\[?(\d+)\]?(?:\.(.*))?$")


@dataclass
class LoadSummary:
    """What ``load`` did: records stored per outcome, and the problems (one line each, naming
    ``file:line`` and field paths, never the content). Filled in batch by batch, so that a load
    ended early (Ctrl-C) still tells what it stored. ``storing``: the batch in hand
    (``file:first..last``) while it is stored; ``stopped``: why the load ended before its end."""

    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    rejected_records: int = 0
    storing: str | None = None
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        return not self.problems and self.stopped is None

    def describe_interrupted(self) -> str:
        """:meth:`describe`, then what became of the batch in hand and of the rest."""
        lines = [self.describe()]
        if self.storing:
            lines.append(f"interrupted while storing {self.storing}: stored whole or not at all")
        lines.append(
            "the rest is not loaded; loading the same files again is safe "
            "(the records already stored are reported unchanged)"
        )
        return "\n".join(lines)

    def describe(self) -> str:
        stored = ", ".join(f"{outcome} {count}" for outcome, count in sorted(self.outcomes.items()))
        lines = [f"loaded {sum(self.outcomes.values())} record(s) ({stored or 'none'})"]
        if self.problems:
            lines.append(
                f"NOT loaded: {self.rejected_records} record(s) in batches with errors; "
                f"{len(self.problems)} problem(s):"
            )
            lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)


def load_files(
    store: Store,
    paths: Sequence[Path],
    *,
    batch_size: int,
    at: Callable[[], datetime] | None = None,
    progress: bool | None = None,
    summary: LoadSummary | None = None,
) -> LoadSummary:
    """Read every file and store its records in batches through ``intake_records``; a batch with
    a bad record stores nothing and is reported; the other batches go on. A line that cannot be
    parsed (or a file that cannot be read) counts as a bad record of its batch: that batch stores
    nothing, the file's earlier batches stay stored, the rest of that file is not read, and the
    other files go on. A record whose id an earlier batch of the same file had is a bad record of
    its batch too, as it is within one batch: ``batch_size`` never decides whether a file's
    repeat becomes a new version. The SQLite write turn not obtained in time
    (:class:`WriterTurnTimeout`: another program writes the file) ends the load: that batch wrote
    nothing, ``summary.stopped`` says where and why, and nothing more is read.
    ``summary``: the one to fill in and return (a caller keeps what was stored when Ctrl-C ends
    the load early). ``progress``: a tqdm bar on stderr (default: only when stderr is a
    terminal)."""
    from tqdm import tqdm

    from fhir_alliance_service.store.engine import WriterTurnTimeout
    from fhir_alliance_service.usecases.intake import intake_records

    clock = at or (lambda: datetime.now(UTC))
    summary = LoadSummary() if summary is None else summary
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(unit="record", file=sys.stderr, disable=not show, desc="load") as bar:

        def flush(batch: list[SourcedRecord], ids: _RecordIds) -> None:
            if not batch:
                return
            repeats = ids.repeats(batch)
            ids.add(batch)
            if repeats:  # a version 2 by accident of the batch size: refused like one in a batch
                summary.rejected_records += len(batch)
                summary.problems.extend(repeats)
            else:
                summary.storing = f"{batch[0].place}..{batch[-1].line}"
                try:
                    results = intake_records(store, [r.payload for r in batch], at=clock())
                except FhirAllianceError as exc:
                    summary.rejected_records += len(batch)
                    summary.problems.extend(_problems(exc, batch))
                else:
                    summary.outcomes.update(str(_outcome(result)) for result in results)
                summary.storing = None
            bar.update(len(batch))
            batch.clear()

        batch: list[SourcedRecord] = []
        try:
            for path in paths:
                ids, read = _RecordIds(), 0
                try:
                    for record in read_records(path):
                        read += 1
                        batch.append(record)
                        if len(batch) >= batch_size:
                            flush(batch, ids)
                except FileFormatError as exc:
                    # An unparsable line (or a read error) is a bad record of the batch it falls
                    # in: the batch's records read before it store nothing, like a batch with a
                    # record the intake refuses; the batches of the file before it are stored. The
                    # rest of the file is not read (past a broken line its records cannot be
                    # trusted to line up).
                    summary.rejected_records += len(batch)
                    summary.problems.append(f"{exc}; {_not_loaded(read, len(batch))}")
                    bar.update(len(batch))
                    batch.clear()
                flush(batch, ids)  # batches never span files: a file's problems stay its own
        except WriterTurnTimeout as exc:
            # The next batches would wait as long: stop, saying where (the batch wrote nothing).
            summary.stopped = f"stopped at {summary.storing}: {exc}; the rest is not loaded"
            summary.storing = None
    return summary


class _RecordIds:
    """The record ids of one file's batches so far, each kept as a 16-byte digest with the line
    it was first read on (about 100 bytes a record, whatever the ids' length; never content)."""

    def __init__(self) -> None:
        self._first_lines: dict[bytes, int] = {}

    def repeats(self, batch: list[SourcedRecord]) -> list[str]:
        """``file:line: id: ...`` for each record of ``batch`` whose id an earlier batch had."""
        problems: list[str] = []
        for record in batch:
            key = _id_key(record.payload)
            first = self._first_lines.get(key) if key is not None else None
            if first is not None:
                problems.append(
                    f"{record.place}: id: the same record id appears twice (first on line {first})"
                )
        return problems

    def add(self, batch: list[SourcedRecord]) -> None:
        for record in batch:
            key = _id_key(record.payload)
            if key is not None:
                self._first_lines.setdefault(key, record.line)


def _id_key(payload: Any) -> bytes | None:
    """A digest of a payload's record id (``system|value`` as written, which is what the intake
    derives the record's identity from); None without one (a revocation, a bad payload)."""
    record_id = payload.get("id") if isinstance(payload, Mapping) else None
    if not isinstance(record_id, str):
        return None
    return hashlib.blake2b(record_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _not_loaded(read: int, dropped: int) -> str:
    """What an unreadable place costs: ``read`` records of the file came before it, the last
    ``dropped`` of them in its batch."""
    if not read:
        return "nothing of this file is loaded"
    if not dropped:
        return "the rest of this file is not loaded (the records before this line are)"
    return (
        f"not loaded: the {dropped} record(s) of this line's batch read before it "
        "and the rest of this file"
    )


def _outcome(result: Any) -> str:
    outcome = getattr(result, "outcome", None)
    return str(getattr(outcome, "value", outcome) or "stored")


def _problems(exc: FhirAllianceError, batch: list[SourcedRecord]) -> list[str]:
    """One line per issue: ``file:line: field.path: message`` when the issue names its record."""
    problems: list[str] = []
    for issue in exc.issues or ():
        match = _INDEXED_PATH.match(issue.path or "")
        index = int(match.group(1)) if match else None
        if index is not None and 0 <= index < len(batch):
            where = batch[index].place
            path = (match.group(2) if match else "") or "(record)"
        else:
            where = f"{batch[0].place}..{batch[-1].line}"
            path = issue.path or "(batch)"
        problems.append(f"{where}: {path}: {issue.message}")
    if not problems:
        problems.append(f"{batch[0].place}..{batch[-1].line}: {exc.message}")
    return problems
