"""Strict JSON reading: duplicate keys, real positions, BOM, huge numbers, deep nesting, size cap."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_alliance.errors import InputError, JsonInputError
from fhir_alliance.jsonio import (
    MAX_NUMBER_CHARS,
    parse_json,
    parse_json_documents,
    read_input,
)


def _error(data: bytes | str, *, documents: bool = False) -> InputError:
    with pytest.raises(InputError) as caught:
        (parse_json_documents if documents else parse_json)(data, source="in.json")
    return caught.value


def test_duplicate_key_is_an_error_at_the_second_key() -> None:
    """A key given twice in one object is refused, pointing at the second occurrence."""
    error = _error('{"total": 1,\n  "items": {"a": 2,\n    "a": 3}}')
    assert [(i.path, i.message) for i in error.issues] == [("in.json:3:5", 'duplicate key "a"')]


def test_equal_keys_in_different_objects_are_fine() -> None:
    """The same key in sibling or nested objects is not a duplicate."""
    assert parse_json('[{"a": 1}, {"a": {"a": 2}}]', source="x") == [{"a": 1}, {"a": {"a": 2}}]


def test_malformed_json_names_line_column_and_reason() -> None:
    """A syntax error reports its real line and column and the decoder's reason."""
    error = _error('{\n  "a": 1,\n  "b": [1, 2,]\n}')
    (issue,) = error.issues
    assert issue.path == "in.json:3:14"
    assert "Expecting value" in issue.message
    assert "in.json:3:14: Expecting value" in str(error)


def test_utf8_bom_is_accepted_in_bytes_and_text() -> None:
    """A UTF-8 byte-order mark before the value is dropped, from bytes or from text."""
    assert parse_json(b'\xef\xbb\xbf{"a": 1}', source="x") == {"a": 1}
    assert parse_json('\ufeff{"a": 1}', source="x") == {"a": 1}


def test_invalid_utf8_names_its_position() -> None:
    """Bytes that are not UTF-8 are an error at their line and column, not a traceback."""
    error = _error(b'{"a":\n "\xff"}')
    assert [i.path for i in error.issues] == ["in.json:2:3"]


@pytest.mark.parametrize(
    ("literal", "reason"),
    [
        ("9" * 5000, "number longer than"),
        ("0." + "1" * 5000, "number longer than"),
        ("1e400", "number too large"),
        ("NaN", "not JSON"),
        ("-Infinity", "not JSON"),
    ],
)
def test_unusable_numbers_are_clear_errors(literal: str, reason: str) -> None:
    """Huge, overflowing or non-finite numbers are refused with their position."""
    error = _error('{"score":\n  [1, ' + literal + "]}")
    (issue,) = error.issues
    assert issue.path == "in.json:2:7"
    assert reason in issue.message


def test_long_but_allowed_number_is_read() -> None:
    """A number at the length limit is still read."""
    assert parse_json("1" * MAX_NUMBER_CHARS, source="x") == int("1" * MAX_NUMBER_CHARS)


def test_nesting_past_the_recursion_limit_is_a_clear_error() -> None:
    """Deeply nested arrays give an InputError, never a RecursionError."""
    error = _error("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in error.issues[0].message


def test_extra_data_after_one_value_is_an_error() -> None:
    """parse_json wants exactly one value."""
    error = _error('{"a": 1}\n{"b": 2}')
    assert error.issues[0].path == "in.json:2:1"


def test_documents_read_ndjson_and_pretty_printed_sequences() -> None:
    """Several values, each on a new line, are read in order; blank lines are skipped."""
    text = '{"a": 1}\n\n{"b":\n  2}\r\n[3]\n'
    assert parse_json_documents(text, source="x") == [{"a": 1}, {"b": 2}, [3]]
    assert parse_json_documents("  \n", source="x") == []


def test_documents_need_a_new_line_between_values() -> None:
    """Two values on one line are an error at the second one."""
    error = _error('{"a": 1}\n{"b": 2} {"c": 3}', documents=True)
    assert error.issues[0].path == "in.json:2:10"


def test_documents_error_on_a_later_line_names_that_line() -> None:
    """A bad line in NDJSON is reported at its own line and column."""
    error = _error('{"a": 1}\n{"b": 2, "b": 3}\n', documents=True)
    assert [(i.path, i.message) for i in error.issues] == [("in.json:2:10", 'duplicate key "b"')]


def test_read_input_refuses_stdin_over_the_cap() -> None:
    """Standard input longer than the cap is an error, never silently cut."""
    with pytest.raises(InputError) as caught:
        read_input("-", max_bytes=10, stdin=io.BytesIO(b"x" * 11))
    assert caught.value.issues[0].path == "stdin"
    assert read_input("-", max_bytes=10, stdin=io.BytesIO(b"x" * 10)) == b"x" * 10


def test_read_input_refuses_a_file_over_the_cap(tmp_path: Path) -> None:
    """A file longer than the cap is an error; one at the cap is read whole."""
    path = tmp_path / "big.json"
    path.write_bytes(b"x" * 11)
    with pytest.raises(InputError) as caught:
        read_input(str(path), max_bytes=10)
    assert "larger than 10 bytes" in caught.value.issues[0].message
    assert read_input(str(path), max_bytes=11) == b"x" * 11


def test_read_input_of_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    """A file that cannot be opened is an InputError naming it."""
    with pytest.raises(InputError) as caught:
        read_input(str(tmp_path / "missing.json"))
    assert caught.value.issues[0].path.endswith("missing.json")


def test_errors_carry_line_column_and_the_field_path_of_a_duplicate() -> None:
    """JsonInputError says where as values: line, column and, for a duplicate key, its field path."""
    error = _error('{"responses": {"2": 1,\n "2": 3}, "items": [{"a": 1, "a": 2}]}')
    assert isinstance(error, JsonInputError)
    assert (error.line, error.column, error.field_path) == (2, 2, "responses.2")
    nested = _error('{"items": [{"x": 1}, {"a": 1, "a": 2}]}')
    assert isinstance(nested, JsonInputError) and nested.field_path == "items.1.a"
    syntax = _error('{"a": }')
    assert isinstance(syntax, JsonInputError)
    assert (syntax.line, syntax.column, syntax.field_path) == (1, 7, None)


def test_max_depth_counts_nesting_not_brackets() -> None:
    """Around the limit, by nesting (the depth check is skipped only for texts with too few
    brackets to reach it): brackets inside strings add none, and wide values are not deep."""
    for depth in range(1, 8):
        text = "[" * depth + "1" + "]" * depth
        if depth <= 4:
            assert parse_json(text, source="x", max_depth=4) is not None
        else:
            with pytest.raises(InputError, match="nested deeper than 4"):
                parse_json(text, source="x", max_depth=4)
    assert parse_json('["[[[[[", {"a": "{{{{"}]', source="x", max_depth=2)
    assert parse_json('[[1], [2], [3], {"a": {}}]', source="x", max_depth=3)
    with pytest.raises(InputError, match="nested deeper than 2"):
        parse_json('["[[", [[1]]]', source="x", max_depth=2)


def test_max_depth_refuses_deeper_nesting() -> None:
    """With max_depth, a value nested deeper is an error; one at the limit is read."""
    assert parse_json('{"a": [[1]]}', source="x", max_depth=3) == {"a": [[1]]}
    with pytest.raises(InputError) as caught:
        parse_json('{"a": [[[1]]]}', source="in.json", max_depth=3)
    assert "nested deeper than 3" in caught.value.issues[0].message
    with pytest.raises(InputError):
        parse_json_documents("[1]\n[[[[2]]]]\n", source="in.json", max_depth=3)


@pytest.mark.parametrize(
    ("text", "field_path", "column"),
    [
        ('{"note": "ok",\n "narrative": "a\\ud800b"}', "narrative", 15),
        ('{"items": ["\\udc00"]}', "items.0", 12),
        ('{"\\ud800": 1}', "\\ud800", 2),
    ],
)
def test_lone_surrogates_are_refused(text: str, field_path: str, column: int) -> None:
    """A string escaping half a UTF-16 pair is not text (RFC 7493): an error at the string."""
    error = _error(text)
    assert isinstance(error, JsonInputError)
    assert error.column == column
    assert "surrogate" in error.issues[0].message
    if field_path != "\\ud800":
        assert error.field_path == field_path


def test_surrogate_pairs_and_escaped_backslashes_are_fine() -> None:
    """A proper pair (an emoji) and a literal backslash before 'ud800' are ordinary text."""
    assert parse_json('["\\ud83d\\ude00", "\\\\ud800"]', source="x") == ["\U0001f600", "\\ud800"]


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**18), 10**18)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(value=_json_values, indent=st.sampled_from([None, 2]))
def test_every_ordinary_json_value_reads_as_the_standard_reader_does(value, indent) -> None:
    """Strictness never refuses ordinary JSON: the result equals json.loads, compact or indented."""
    text = json.dumps(value, indent=indent)
    assert parse_json(text, source="x") == json.loads(text)
    assert parse_json_documents(text.encode(), source="x") == [json.loads(text)]
