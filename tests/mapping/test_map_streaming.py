"""``fhir-alliance map --ndjson`` over JSON lines streams in one pass: same bytes, same errors."""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_alliance.cli import main
from fhir_alliance.errors import JsonInputError
from fhir_alliance.jsonio import parse_json
from fhir_alliance.mapping import streaming
from fhir_alliance.mapping.cli import read_items, resource_groups
from fhir_alliance.mapping.observation import MAPPER as OBSERVATIONS
from fhir_alliance.schemas.observations import load_record

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _mixed_batch() -> list[dict[str, Any]]:
    """Every observation, note and consent example, with a revocation placed before its consent."""
    names = [
        *sorted((EXAMPLES / "observations").glob("*.json")),
        *sorted((EXAMPLES / "notes").glob("*.json")),
        *sorted((EXAMPLES / "consent").glob("*.json")),
    ]
    records = [json.loads(p.read_text()) for p in names]
    revocation = json.loads(
        (EXAMPLES / "consent" / "revocation" / "withdraw-sharing.json").read_text()
    )
    return [revocation, *records]


def _write_lines(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _in_memory_ndjson(path: Path, version: str) -> bytes:
    """What the whole-batch path writes for the same input (the reference)."""
    groups = resource_groups(read_items([str(path)]), version=version)
    return b"".join(orjson.dumps(r) + b"\n" for _, group in groups for r in group)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["map", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("version", ["4.0.1", "5.0.0"])
def test_streamed_output_is_byte_identical_to_the_in_memory_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    """A mixed batch (observations, notes, consents and a revocation) streams to the same bytes."""
    source = _write_lines(tmp_path / "mixed.ndjson", _mixed_batch())
    expected = _in_memory_ndjson(source, version)
    streamed = streaming.stream_ndjson(
        [streaming.InputFile(str(source), str(source))], version=version, max_bytes=1 << 20
    )
    assert streamed is not None, "a clean JSON-lines batch must take the streaming path"
    assert b"".join(streamed) == expected
    target = tmp_path / "out.ndjson"
    code, _, err = _run(
        capsys, str(source), "--ndjson", "--fhir-version", version, "-o", str(target)
    )
    assert code == 0, err
    assert target.read_bytes() == expected


def test_stdin_is_spooled_and_streams_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """JSON lines on stdin give the same lines as the same file."""
    source = _write_lines(tmp_path / "mixed.ndjson", _mixed_batch())
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(source.read_bytes())))
    code, out, err = _run(capsys, "-", "--ndjson")
    assert code == 0, err
    assert out.encode() == _in_memory_ndjson(source, "4.0.1")


def test_batch_errors_are_those_of_the_whole_batch_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A duplicate id and an orphan repair in JSON lines are refused, naming each line, and nothing
    is written."""
    rupture = json.loads((EXAMPLES / "observations" / "rupture.json").read_text())
    repair = json.loads((EXAMPLES / "observations" / "repair.json").read_text())
    source = _write_lines(tmp_path / "bad.ndjson", [repair, rupture, rupture])
    assert (
        streaming.stream_ndjson(
            [streaming.InputFile(str(source), str(source))], version="4.0.1", max_bytes=1 << 20
        )
        is None
    )
    stray = {**repair, "id": f"{repair['id']}-2", "rupture": f"{rupture['id']}-elsewhere"}
    orphan = _write_lines(tmp_path / "orphan.ndjson", [stray])
    code, out, err = _run(capsys, str(source), str(orphan), "--ndjson")
    assert code == 1
    assert out == ""
    assert err.splitlines()[1:] == [
        "  bad.ndjson:1.id: the same record id appears twice",
        "  bad.ndjson:2.id: the same record id appears twice",
        "  orphan.ndjson:0.rupture: names a rupture not in the batch nor known",
    ]


def test_bad_json_line_is_reported_where_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken line is reported at file:line:column, as the whole-file reader reports it."""
    rupture = (EXAMPLES / "observations" / "rupture.json").read_text()
    source = tmp_path / "broken.ndjson"
    source.write_text(json.dumps(json.loads(rupture)) + '\n{"kind": }\n')
    code, out, err = _run(capsys, str(source), "--ndjson")
    assert code == 1 and out == ""
    assert "broken.ndjson:2:" in err


def test_batch_keys_give_the_same_issues_as_the_records() -> None:
    """check_batch_keys over batch keys finds what check_batch finds over the records."""
    rupture = load_record(json.loads((EXAMPLES / "observations" / "rupture.json").read_text()))
    repair = load_record(json.loads((EXAMPLES / "observations" / "repair.json").read_text()))
    rating = load_record(
        json.loads((EXAMPLES / "observations" / "dimension-rating.json").read_text())
    )
    for batch in ([("a", repair)], [("a", rupture), ("b", repair), ("c", rupture), ("d", rating)]):
        keys = [(label, OBSERVATIONS.batch_key(record)) for label, record in batch]
        assert OBSERVATIONS.check_batch_keys(keys) == OBSERVATIONS.check_batch(batch)
        assert OBSERVATIONS.check_batch_keys(keys)  # each batch does break a rule


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_folded_consents_keep_their_place_among_other_records(tmp_path: Path, seed: int) -> None:
    """Consents (mapped only once the batch is folded) land between the other records' lines
    exactly where the in-memory path puts them, wherever they stand in the input."""
    batch = _mixed_batch()
    random.Random(seed).shuffle(batch)
    source = _write_lines(tmp_path / "shuffled.ndjson", batch)
    streamed = streaming.stream_ndjson(
        [streaming.InputFile(str(source), str(source))], version="4.0.1", max_bytes=1 << 20
    )
    assert streamed is not None
    assert b"".join(streamed) == _in_memory_ndjson(source, "4.0.1")


def _observations() -> list[dict[str, Any]]:
    """Observation examples only: nothing folded, so the spool itself becomes the output."""
    return [json.loads(p.read_text()) for p in sorted((EXAMPLES / "observations").glob("*.json"))]


@pytest.mark.parametrize("folded", [False, True])
def test_output_file_is_replaced_whole_and_no_temporary_file_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], folded: bool
) -> None:
    """``-o`` over an existing file: the same bytes as the in-memory path, the file keeps its
    permission bits, and nothing but the input and the output is left in the directory."""
    # Folded: the consents first, so their lines (written after the pass) go before the others'.
    batch = _mixed_batch()[::-1] if folded else _observations()
    source = _write_lines(tmp_path / "in.ndjson", batch)
    target = tmp_path / "out.ndjson"
    target.write_bytes(b"old contents, longer than nothing\n" * 1000)
    target.chmod(0o640)
    code, out, err = _run(capsys, str(source), "--ndjson", "-o", str(target))
    assert code == 0, err
    assert out == ""
    assert target.read_bytes() == _in_memory_ndjson(source, "4.0.1")
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ndjson", "out.ndjson"]


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="giving a file another user's ownership needs root",
)
def test_output_file_of_another_user_keeps_its_owner_and_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-o`` run by root over a file that belongs to someone else (a clinic user's export,
    refreshed by a root cron job): the new file keeps that owner, group and mode."""
    source = _write_lines(tmp_path / "in.ndjson", _observations())
    target = tmp_path / "out.ndjson"
    target.write_bytes(b"old\n")
    os.chown(target, 12345, 23456)
    target.chmod(0o640)
    code, _, err = _run(capsys, str(source), "--ndjson", "-o", str(target))
    assert code == 0, err
    found = target.stat()
    assert (found.st_uid, found.st_gid, found.st_mode & 0o777) == (12345, 23456, 0o640)
    assert target.read_bytes() == _in_memory_ndjson(source, "4.0.1")


def test_output_file_whose_owner_cannot_be_given_is_written_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where this process may not give a new file the output file's owner (chown refused), the
    output is written into the existing file instead, which keeps its owner; no temporary file
    stays behind."""
    source = _write_lines(tmp_path / "in.ndjson", _observations())
    target = tmp_path / "out.ndjson"
    target.write_bytes(b"old contents\n" * 100)
    before = target.stat()
    os_stat = os.fstat

    def other_owner(fd: int) -> os.stat_result:  # a new file would not get the target's owner
        made = os_stat(fd)
        fields = list(made)
        fields[4] = before.st_uid + 1
        return os.stat_result(fields)

    def refused(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(streaming.os, "fstat", other_owner)
    monkeypatch.setattr(streaming.os, "fchown", refused)
    code, _, err = _run(capsys, str(source), "--ndjson", "-o", str(target))
    assert code == 0, err
    assert target.read_bytes() == _in_memory_ndjson(source, "4.0.1")
    assert target.stat().st_ino == before.st_ino  # the same file, written through
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ndjson", "out.ndjson"]


def test_new_output_file_gets_the_umask_permissions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new output file is made as ``open(..., "wb")`` would make it (0666 less the umask), not
    with a temporary file's private 0600."""
    source = _write_lines(tmp_path / "in.ndjson", _observations())
    target = tmp_path / "out.ndjson"
    umask = os.umask(0o022)
    try:
        code, _, err = _run(capsys, str(source), "--ndjson", "-o", str(target))
    finally:
        os.umask(umask)
    assert code == 0, err
    assert target.stat().st_mode & 0o777 == 0o644


def test_output_through_a_symlink_is_written_through_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-o`` naming a symlink writes the file it points to; the link stays a link."""
    source = _write_lines(tmp_path / "in.ndjson", _observations())
    real = tmp_path / "real.ndjson"
    real.write_bytes(b"old\n")
    link = tmp_path / "link.ndjson"
    link.symlink_to(real)
    code, _, err = _run(capsys, str(source), "--ndjson", "-o", str(link))
    assert code == 0, err
    assert link.is_symlink()
    assert real.read_bytes() == _in_memory_ndjson(source, "4.0.1")


def test_output_with_another_hard_link_is_written_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-o`` naming a file with a second hard link writes the file itself, so both names see
    the output (replacing it would leave the other name on the old contents)."""
    source = _write_lines(tmp_path / "in.ndjson", _observations())
    target = tmp_path / "out.ndjson"
    target.write_bytes(b"old\n")
    other = tmp_path / "other-name.ndjson"
    other.hardlink_to(target)
    code, _, err = _run(capsys, str(source), "--ndjson", "-o", str(target))
    assert code == 0, err
    assert other.read_bytes() == target.read_bytes() == _in_memory_ndjson(source, "4.0.1")


@pytest.mark.parametrize("existing", [False, True])
def test_failing_check_leaves_the_output_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: bool
) -> None:
    """A batch rule broken late in the input: ``-o``'s file is left as it was (or absent), and no
    temporary file is left beside it."""
    rupture = json.loads((EXAMPLES / "observations" / "rupture.json").read_text())
    source = _write_lines(tmp_path / "bad.ndjson", [*_observations(), rupture, rupture])
    target = tmp_path / "out.ndjson"
    if existing:
        target.write_bytes(b"keep me\n")
    code, _, err = _run(capsys, str(source), "--ndjson", "-o", str(target))
    assert code == 1
    assert "the same record id appears twice" in err
    if existing:
        assert target.read_bytes() == b"keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["bad.ndjson", "out.ndjson"] if existing else ["bad.ndjson"]
    )


@pytest.mark.parametrize("folded", [False, True])
def test_exception_while_writing_leaves_the_output_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folded: bool
) -> None:
    """An unexpected exception while the output is made (a disk full: in the pass, or while the
    folded consents are spliced in) propagates; the output file is untouched and no temporary
    file is left behind."""
    source = _write_lines(tmp_path / "in.ndjson", _mixed_batch() if folded else _observations())
    target = tmp_path / "out.ndjson"
    target.write_bytes(b"keep me\n")

    def disk_full_in_the_pass(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    def disk_full_in_the_splice(*_: Any) -> Iterator[bytes]:
        yield b"{}\n"  # the splice has begun
        raise OSError(28, "No space left on device")

    if folded:
        monkeypatch.setattr(streaming, "_spliced", disk_full_in_the_splice)
    else:
        monkeypatch.setattr(streaming, "_write_resources", disk_full_in_the_pass)
    with pytest.raises(OSError, match="No space left"):
        streaming.stream_ndjson_to_file(
            [streaming.InputFile(str(source), str(source))],
            str(target),
            version="4.0.1",
            max_bytes=1 << 20,
        )
    assert target.read_bytes() == b"keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ndjson", "out.ndjson"]


@pytest.mark.parametrize(
    "line",
    [
        b'{"kind":"x","id":"a","id":"b"}\n',  # orjson keeps the last; the strict reader refuses
        b'{"kind":"x","n":184467440737095516150}\n',  # orjson reads a float; strictly an int
        b'{"kind":"x","n":' + b"1" * 70 + b"}\n",  # a number longer than the strict cap
        b'{"kind":"x","n":1e400}\n',
        b'{"kind":"x","n":1E5,"m":1.0,"k":-0.0,"j":12345678901234567890}\n',
        b'{"kind":"x","s":"\\u00e9\\/"}\n',
        b'{"kind":"x","s":"\\ud800"}\n',
        b'{"kind":"x","s":"caf\xc3\xa9 \\n\\"q\\""}\n',
        b'{"kind":"x","o":{"a":[1,2.5,null,true]}}\n',
        b'{"kind": "x", "n": 1}\r\n',
        b'\xef\xbb\xbf{"kind":"x"}\n',
        b'{"kind":"x"}',
        b"[1]\n",
    ],
)
def test_each_line_reads_as_the_strict_reader_reads_it(tmp_path: Path, line: bytes) -> None:
    """The pass's fast reading of compact lines gives exactly the strict reader's value (int
    stays int, float stays float), and refuses what it refuses."""
    source = tmp_path / "one.ndjson"
    source.write_bytes(line)
    files = [streaming.InputFile(str(source), str(source))]
    try:
        expected = parse_json(line, source="one.ndjson")
    except JsonInputError:
        expected = None
    if not isinstance(expected, dict):  # refused, or not one of our records: not streamed
        with pytest.raises(streaming._NotStreamable):
            list(streaming._records(files, 1 << 20))
        return
    assert [(label, repr(item)) for label, item in streaming._records(files, 1 << 20)] == [
        ("one.ndjson:0", repr(expected))
    ]
