"""The JSON form of observation records: every example loads, bad input names its field path."""

import copy
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings

from fhir_alliance.errors import InputError
from fhir_alliance.model.common import Identifier
from fhir_alliance.model.observations import InstrumentAdministration, RepairEvent, RuptureEvent
from fhir_alliance.schemas.observations import dump_record, load_batch, load_record
from tests.mapping.observation_strategies import records

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "observations"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))


def _example(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text())


def _paths(exc: pytest.ExceptionInfo[InputError]) -> set[str]:
    return {i.path for i in exc.value.issues}


def test_examples_cover_every_kind() -> None:
    """The shipped examples include each record kind at least once."""
    kinds = {json.loads(p.read_text())["kind"] for p in EXAMPLE_FILES}
    assert kinds == {"instrument-administration", "dimension-rating", "rupture", "repair"}


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_every_example_loads_and_dumps_back(path: Path) -> None:
    """Each shipped example loads, and dumping it gives the same JSON back."""
    data = json.loads(path.read_text())
    record = load_record(data)
    assert load_record(dump_record(record)) == record
    assert dump_record(record) == data


def test_example_batch_links_repair_to_rupture() -> None:
    """All examples together load as one batch: the repair finds its rupture."""
    records = load_batch([json.loads(p.read_text()) for p in EXAMPLE_FILES])
    repair = next(r for r in records if isinstance(r, RepairEvent))
    rupture = next(r for r in records if isinstance(r, RuptureEvent))
    assert repair.rupture == rupture.id


def test_responses_become_sorted_exact_decimals() -> None:
    """Item answers are kept as exact decimals sorted by item number."""
    record = load_record(_example("srs-administration.json"))
    assert isinstance(record, InstrumentAdministration)
    assert [r.number for r in record.responses] == [1, 2, 3, 4]
    assert record.responses[1].value == Decimal("8.7")


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["responses"].__setitem__("2", 6), "responses.2"),
        (lambda d: d["responses"].__setitem__("2", 0), "responses.2"),
        (lambda d: d["responses"].__setitem__("2", 3.5), "responses.2"),
        (lambda d: d["responses"].__setitem__("13", 3), "responses.13"),
        (lambda d: d["responses"].__setitem__("01", 3), "responses.01"),
        (lambda d: d["responses"].__setitem__("2", "4"), "responses.2.value"),
        (lambda d: d["responses"].__setitem__("2", True), "responses.2.value"),
        (lambda d: d["responses"].pop("7"), "responses.7"),
        (lambda d: d.__setitem__("responses", {}), "responses"),
        (lambda d: d.__setitem__("instrument", "wai-s"), "instrument"),
        (lambda d: d.__setitem__("effective", "2026-11-20T16:00:00"), "effective"),
        (lambda d: d.__setitem__("effective", 1700000000), "effective"),
        (lambda d: d.__setitem__("colour", "blue"), "colour"),
        (lambda d: d.pop("patient"), "patient"),
        (lambda d: d["patient"].__setitem__("identifier", "no-bar"), "patient.identifier"),
        (lambda d: d.__setitem__("id", "just-a-value"), "id"),
        (lambda d: d.__setitem__("rater", {"role": "therapist"}), "rater.who"),
        (lambda d: d.__setitem__("rater", {"role": "automated"}), "rater.automated"),
        (lambda d: d.__setitem__("rater", {"role": "coach"}), "rater.role"),
        (
            lambda d: d.__setitem__(
                "rater", {"role": "therapist", "who": {"reference": "Practitioner/1"}}
            ),
            "rater.role",
        ),
    ],
)
def test_bad_administration_names_the_field_path(mutate, path: str) -> None:
    """Out-of-range, missing, unknown, wrongly typed or unknown fields are reported at their path."""
    data = _example("wai-sr-administration.json")
    mutate(data)
    with pytest.raises(InputError) as exc:
        load_record(data)
    assert path in _paths(exc)


def test_partial_administration_needs_the_partial_flag() -> None:
    """A missing item is accepted only when the record says partial: true."""
    data = _example("wai-sr-administration.json")
    del data["responses"]["9"]
    with pytest.raises(InputError):
        load_record(data)
    data["partial"] = True
    record = load_record(data)
    assert isinstance(record, InstrumentAdministration) and len(record.responses) == 11


def test_srs_value_with_two_decimals_is_refused() -> None:
    """SRS answers have at most one decimal."""
    data = _example("srs-administration.json")
    data["responses"]["1"] = 9.15
    with pytest.raises(InputError) as exc:
        load_record(data)
    assert _paths(exc) == {"responses.1"}


def test_timestamp_beyond_future_tolerance_is_refused() -> None:
    """An effective time more than the tolerance ahead of the clock is refused; within it, accepted."""
    data = _example("dimension-rating.json")
    data["effective"] = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with pytest.raises(InputError) as exc:
        load_record(data)
    assert _paths(exc) == {"effective"}
    data["effective"] = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    load_record(data)


def test_unknown_kind_is_refused_at_kind() -> None:
    """A record with an unknown kind is refused at the kind field."""
    with pytest.raises(InputError) as exc:
        load_record({"kind": "mood"})
    assert _paths(exc) == {"kind"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("value", 6), ("value", 4.5), ("dimension", "warmth"), ("scale", "likert-1-9")],
)
def test_dimension_rating_value_must_fit_its_declared_scale(field: str, value: object) -> None:
    """A rating outside its scale, or of an unknown dimension or scale, is refused at that field."""
    data = _example("dimension-rating.json")
    data[field] = value
    with pytest.raises(InputError) as exc:
        load_record(data)
    assert field in _paths(exc)


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("tension", 6, "tension"),
        ("tension", 2.0, "tension"),
        ("resolution", 0, "resolution"),
        ("markers", ["minimal-response", "complaint-about-therapist"], "markers.1"),
        ("rupture_type", "sulking", "rupture_type"),
        ("repaired", False, "repair_strategies"),
        ("narrative", "   ", "narrative"),
        ("narrative", "bell\x07", "narrative"),
    ],
)
def test_bad_rupture_names_the_field(field: str, value: object, path: str) -> None:
    """Rupture rules: tension and resolution 1-5, markers fit the type, strategies need repaired."""
    data = _example("rupture.json")
    data[field] = value
    with pytest.raises(InputError) as exc:
        load_record(data)
    assert path in _paths(exc)


def test_repair_without_its_rupture_is_refused_in_a_batch() -> None:
    """A repair whose rupture is neither in the batch nor known is refused at N.rupture."""
    repair = _example("repair.json")
    with pytest.raises(InputError) as exc:
        load_batch([_example("dimension-rating.json"), repair])
    assert _paths(exc) == {"1.rupture"}
    known = Identifier.parse(repair["rupture"])
    assert len(load_batch([repair], known_ruptures={known})) == 1


def test_batch_reports_errors_of_all_items_with_index_prefix() -> None:
    """Errors in several items are all reported, each prefixed with its index."""
    bad1, bad2 = _example("rupture.json"), copy.deepcopy(_example("srs-administration.json"))
    bad1["tension"] = 9
    bad2["responses"]["4"] = 11
    with pytest.raises(InputError) as exc:
        load_batch([bad1, bad2])
    assert _paths(exc) == {"0.tension", "1.responses.4"}


def test_duplicate_ids_in_a_batch_are_refused() -> None:
    """Two records with one id in a batch are refused."""
    item = _example("dimension-rating.json")
    with pytest.raises(InputError) as exc:
        load_batch([item, item])
    assert _paths(exc) == {"0.id", "1.id"}


@settings(max_examples=200, deadline=None)
@given(record=records.filter(lambda r: r.effective < datetime.now(UTC)))
def test_json_form_round_trip(record) -> None:
    """Any valid record dumps to JSON that loads back to the same record."""
    assert load_record(json.loads(json.dumps(dump_record(record)))) == record


def test_every_json_block_in_the_docs_is_a_valid_record_equal_to_a_shipped_example() -> None:
    """docs/observations.md shows only records that load, each identical to a file in examples/."""
    text = (EXAMPLES.parents[1] / "docs" / "observations.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```json\n")[1:]]
    kinds = {json.loads(b)["kind"] for b in blocks}
    assert kinds == {"instrument-administration", "dimension-rating", "rupture", "repair"}
    shipped = [json.loads(p.read_text()) for p in EXAMPLE_FILES]
    for block in blocks:
        data = json.loads(block)
        load_record(data)
        assert data in shipped


def test_reused_schemas_keep_no_state_between_records() -> None:
    """Loading bad, good, bad again gives the same errors and the same record each time."""
    good = _example("srs-administration.json")
    bad = copy.deepcopy(good)
    bad["responses"]["2"] = 12
    errors = []
    for _ in range(2):
        with pytest.raises(InputError) as caught:
            load_record(bad)
        errors.append([(i.path, i.message) for i in caught.value.issues])
        assert load_record(good) == load_record(copy.deepcopy(good))
    assert errors[0] == errors[1] == [("responses.2", errors[0][0][1])]


def test_future_tolerance_is_honoured_per_call() -> None:
    """A record one hour ahead is refused by default and accepted with a two-hour tolerance, in
    either order (the reused schemas are kept per tolerance)."""
    ahead = _example("srs-administration.json")
    ahead["effective"] = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with pytest.raises(InputError):
        load_record(ahead)
    assert load_record(ahead, future_tolerance=timedelta(hours=2)).id is not None
    with pytest.raises(InputError):
        load_record(ahead)


def test_duplicate_ids_in_a_large_batch_are_each_reported() -> None:
    """Every record whose id appears twice is reported at its own index (counted once per id)."""
    rupture = _example("rupture.json")
    items = [copy.deepcopy(rupture) for _ in range(3)]
    for index, item in enumerate(items[:2]):
        item["id"] = f"https://clinic.example.org/alliance-records|r-{index}"
    items[2]["id"] = items[0]["id"]
    with pytest.raises(InputError) as caught:
        load_batch(items)
    assert _paths(caught) == {"0.id", "2.id"}


def _issues_of(responses: dict, **extra: object) -> set[tuple[str, str]] | Decimal:
    """Every (path, message) a WAI-SR administration with these responses is refused with, or
    (accepted) the answer to item 2."""
    data = _example("wai-sr-administration.json") | {"responses": responses, **extra}
    try:
        record = load_record(data)
    except InputError as exc:
        return {(i.path, i.message) for i in exc.issues}
    assert isinstance(record, InstrumentAdministration)
    return next(r.value for r in record.responses if r.number == 2)


NO_ITEM = "wai-sr has no item {!r}; items are 1..12"
NOT_GRID = "must be an integer in 1..5"


@pytest.mark.parametrize(
    ("responses", "extra", "expected"),
    [
        # A numeric key the instrument lacks counts as answered: no "at least one item" on top.
        ({"99": 3}, {"partial": True}, {("responses.99", NO_ITEM.format("99"))}),
        # A key that is not a number written canonically answers nothing.
        (
            {"07": 3},
            {"partial": True},
            {
                ("responses.07", NO_ITEM.format("07")),
                ("responses", "at least one item must be answered"),
            },
        ),
        (
            {"2": 4, "x": 1},
            {"partial": True},
            {("responses.x", NO_ITEM.format("x"))},
        ),
        ({"2": 4}, {"partial": True}, Decimal("4")),
        ({"2": 4.0}, {"partial": True}, Decimal("4.0")),
        ({"2": -0.0}, {"partial": True}, {("responses.2", NOT_GRID)}),
        ({"2": 10**30}, {"partial": True}, {("responses.2", NOT_GRID)}),
        ({"2": -(10**18)}, {"partial": True}, {("responses.2", NOT_GRID)}),
        ({"2": 10**5000}, {"partial": True}, {("responses.2.value", "Not a valid number.")}),
        (
            {"2": float("nan")},
            {"partial": True},
            {("responses.2.value", "Special numeric values (nan or infinity) are not permitted.")},
        ),
        (
            {"2": float("-inf")},
            {"partial": True},
            {("responses.2.value", "Special numeric values (nan or infinity) are not permitted.")},
        ),
        ({"2": 2.5}, {"partial": True}, {("responses.2", NOT_GRID)}),
    ],
)
def test_response_keys_and_numbers_at_their_edges(responses, extra, expected) -> None:
    """Item keys and answers at the edges: the exact issues, or the exact Decimal kept."""
    got = _issues_of(responses, **extra)
    if isinstance(expected, Decimal):
        assert isinstance(got, Decimal) and str(got) == str(expected)
    else:
        assert got == expected


def test_every_item_missing_is_reported_without_partial() -> None:
    """Without ``partial``, each unanswered item is reported at its own key, in item order."""
    got = _issues_of({"1": 3, "99": 2})
    assert isinstance(got, set)
    expected = {("responses.99", NO_ITEM.format("99"))} | {
        (f"responses.{n}", "missing; set partial: true to submit a partial administration")
        for n in range(2, 13)
    }
    assert got == expected


@pytest.mark.parametrize(
    ("labels", "path"),
    [
        ([{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "sud"}], "0"),
        ([{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "BH"}], "0"),
        ([{"system": "urn:x", "code": "a"}, {"system": "urn:x", "code": "a"}], "1"),
    ],
)
def test_security_labels_are_readable_and_not_repeated(labels: list, path: str) -> None:
    """A label the engine cannot read, one the mapping derives anyway (BH), or one given twice is
    refused at its index: the record must read back from FHIR the same."""
    data = _example("srs-administration.json") | {"security_labels": labels}
    with pytest.raises(InputError) as caught:
        load_record(data)
    assert [i.path for i in caught.value.issues] == [f"security_labels.{path}"]


def test_a_security_label_system_given_by_oid_is_normalised() -> None:
    """``urn:oid:2.16.840.1.113883.5.4|SUD`` is v3-ActCode SUD, as the gate reads it."""
    data = _example("srs-administration.json") | {
        "security_labels": [{"system": "urn:oid:2.16.840.1.113883.5.4", "code": "SUD"}]
    }
    record = load_record(data)
    assert dump_record(record)["security_labels"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SUD"}
    ]


@pytest.mark.parametrize(
    ("effective", "refused"),
    [
        ("2025-01-01T10:00:00+05:30:15", True),
        ("2025-01-01T10:00:00+05:30:00.5", True),
        ("2025-01-01T10:00:00+14:30", True),
        ("2025-01-01T10:00:00+14:00", False),
        ("2025-01-01T10:00:00-03:30", False),
        ("2025-01-01T10:00:00Z", False),
    ],
)
def test_a_utc_offset_fhir_cannot_carry_is_refused_at_the_field(
    effective: str, refused: bool
) -> None:
    """FHIR's dateTime takes ``Z`` or ``±hh:mm`` up to 14:00; Python's reader takes more."""
    data = _example("srs-administration.json") | {"effective": effective}
    if not refused:
        assert load_record(data).effective.isoformat()
        return
    with pytest.raises(InputError) as caught:
        load_record(data)
    assert [i.path for i in caught.value.issues] == ["effective"]


@pytest.mark.parametrize("code", ["U", "L", "M", "N"])
def test_a_confidentiality_below_restricted_is_refused(code: str) -> None:
    """The mapping labels every record R (restricted). A lower v3-Confidentiality code beside it
    (``N``) would let a consent that permits only normal-confidentiality data match the record
    (a provision applies when the resource carries any of its labels): refused at its index.
    Found: accepted and written beside R, so such a permit released the record (fail open)."""
    data = _example("srs-administration.json") | {
        "security_labels": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SUD"},
            {"system": "urn:oid:2.16.840.1.113883.5.25", "code": code},
        ]
    }
    with pytest.raises(InputError) as caught:
        load_record(data)
    assert [i.path for i in caught.value.issues] == ["security_labels.1"]


def test_very_restricted_beside_restricted_is_kept() -> None:
    """``V`` is stricter than the R the mapping gives: kept, so a consent denying V sees it."""
    data = _example("srs-administration.json") | {
        "security_labels": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "V"}
        ]
    }
    assert [c.code for c in load_record(data).security_labels] == ["V"]
