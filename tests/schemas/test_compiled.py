"""The compiled loader: the same records and the same errors as marshmallow, generated not copied."""

import copy
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields, post_load, pre_load, validates_schema

from fhir_alliance.errors import InputError
from fhir_alliance.instruments import INSTRUMENTS, InstrumentCode
from fhir_alliance.schemas import notes as note_schemas
from fhir_alliance.schemas.common import DEFAULT_FUTURE_TOLERANCE, load_or_raise
from fhir_alliance.schemas.compiled import CompiledLoader, compiled_loader, json_schema
from fhir_alliance.schemas.consent import _CONSENT_SCHEMA, dump_consent, load_consent
from fhir_alliance.schemas.notes import dump_note, load_note
from fhir_alliance.schemas.observations import _SCHEMAS, _schema, dump_record, load_record
from tests.mapping.consent_strategies import consent_records
from tests.mapping.observation_strategies import (
    administrations,
    ratings,
    records,
    repairs,
    ruptures,
)
from tests.notes.note_strategies import notes

ROOT = Path(__file__).resolve().parents[2]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["", " ", "x", "client", "therapist", "a|b", "2026-01-01T00:00:00+00:00"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(form: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every path to a value inside a JSON form."""
    out = [prefix] if prefix else []
    if isinstance(form, dict):
        for key, value in form.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(form, list):
        for index, value in enumerate(form):
            out += _paths(value, (*prefix, str(index)))
    return out


@st.composite
def mutated_forms(
    draw: st.DrawFn, valid: st.SearchStrategy[Any] = records, dump: Any = dump_record
) -> dict[str, Any]:
    """A valid record's JSON form with up to three changes: a value replaced, a key removed or an
    unknown key added, at any depth (the kind is kept, so both paths reach a schema)."""
    form = copy.deepcopy(dump(draw(valid)))
    for _ in range(draw(st.integers(0, 3))):
        candidates = [p for p in _paths(form) if p != ("kind",)]
        path = draw(st.sampled_from(candidates))
        parent: Any = form
        for part in path[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if isinstance(parent, list):
            parent[int(last)] = draw(json_values)
        elif action == "replace":
            parent[last] = draw(json_values)
        elif action == "remove":
            del parent[last]
        else:
            parent[draw(st.sampled_from(["extra", "Id", "partial", "who", "status"]))] = draw(
                json_values
            )
    return form


def _outcome(load: Any, form: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", load(form)
    except InputError as exc:
        return "error", [(i.path, i.message) for i in exc.issues]


def _marshmallow_only(form: dict[str, Any]) -> Any:
    return load_or_raise(_schema(form["kind"], DEFAULT_FUTURE_TOLERANCE), form)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_forms())
def test_compiled_and_marshmallow_accept_and_reject_the_same(form: dict[str, Any]) -> None:
    """Valid or broken, a form gets the same record or the same errors at the same paths."""
    assert _outcome(load_record, copy.deepcopy(form)) == _outcome(_marshmallow_only, form)


@settings(max_examples=60, deadline=None)
@given(records.filter(lambda r: r.effective <= datetime.now(UTC)))
def test_valid_records_take_the_compiled_path(record: Any) -> None:
    """A valid form (not dated in the future) is loaded by the generated function, never by the
    marshmallow fallback."""
    form = dump_record(record)
    loader = compiled_loader(_schema(form["kind"], DEFAULT_FUTURE_TOLERANCE))
    assert loader is not None
    assert loader.fast(form) == record


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_forms(consent_records(), dump_consent))
def test_consents_load_alike_on_both_paths(form: dict[str, Any]) -> None:
    """Consent records (recursive provisions included): same record or same errors on both paths."""
    assert _outcome(load_consent, copy.deepcopy(form)) == _outcome(
        lambda f: load_or_raise(_CONSENT_SCHEMA, f), form
    )


def test_json_schema_is_generated_from_the_fields() -> None:
    """The JSON schema follows the marshmallow fields: data keys, required, enums, no extras."""
    schema = json_schema(_schema("instrument-administration", DEFAULT_FUTURE_TOLERANCE))
    assert schema["additionalProperties"] is False
    assert "partial" in schema["properties"]  # the data key, not the attribute name
    assert "declared_partial" not in schema["properties"]
    assert {"kind", "id", "patient", "rater", "effective", "instrument", "responses"} <= set(
        schema["required"]
    )
    role = schema["properties"]["rater"]["properties"]["role"]
    assert set(role["enum"]) == {"client", "therapist", "observer", "automated"}
    tension = json_schema(_schema("rupture", DEFAULT_FUTURE_TOLERANCE))["properties"]["tension"]
    assert (tension["minimum"], tension["maximum"]) == (1, 5)


class _WithPreLoad(Schema):
    name = fields.String()

    @pre_load
    def _strip(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return data


def test_schema_with_hooks_it_cannot_replay_is_not_compiled() -> None:
    """A pre_load hook would be skipped by the plan, so such a schema stays with marshmallow."""
    with pytest.raises(TypeError):
        CompiledLoader(_WithPreLoad())
    assert compiled_loader(_WithPreLoad()) is None


class _Named(Schema):
    name = fields.String(required=True)
    count = fields.Integer(load_default=0)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> tuple[str, int]:
        return (data["name"], data["count"])


def test_loader_falls_back_to_marshmallow_errors() -> None:
    """Refused input raises marshmallow's error at marshmallow's path; good input uses the plan."""
    loader = CompiledLoader(_Named())
    assert loader.load({"name": "a"}) == ("a", 0)
    with pytest.raises(InputError) as caught:
        loader.load({"name": 3}, prefix="7")
    assert [(i.path, i.message) for i in caught.value.issues] == [("7.name", "Not a valid string.")]


class _Shouting(fields.String):
    """A String subclass with its own loading code: it must not be loaded as a plain string."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        return str(super()._deserialize(value, attr, data, **kwargs)).upper()


class _StrictCount(fields.Integer):
    """A subclass that changes no loading method: loaded as marshmallow's Integer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)


class _Custom(Schema):
    class Meta:
        unknown = "raise"

    word = _Shouting(required=True)
    count = _StrictCount(load_default=0)


def test_field_subclasses_with_their_own_loading_code_are_called() -> None:
    """A field class that overrides a loading method runs its own code on the fast path; one that
    overrides none is compiled as its marshmallow base."""
    loader = CompiledLoader(_Custom())
    assert loader.fast({"word": "quiet", "count": 2}) == {"word": "QUIET", "count": 2}
    assert "_deserialize" in loader.source  # the subclass's own method is called
    with pytest.raises(InputError):
        loader.load({"word": "x", "count": "2"})  # strict: a string is not an integer


class _ReadsKeywords(Schema):
    class Meta:
        unknown = "raise"

    name = fields.String(required=True)

    @validates_schema
    def _quiet(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data["name"]:
            raise ValidationError("empty")

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> tuple[str, Any]:
        return (data["name"], kwargs["unknown"])


def test_hooks_get_marshmallows_keywords_unless_they_provably_ignore_them() -> None:
    """A hook whose body reads its ``**kwargs`` gets partial/many/unknown as marshmallow passes
    them; one that never reads them is called with the data alone (the same behaviour, cheaper)."""
    loader = CompiledLoader(_ReadsKeywords())
    assert loader.fast({"name": "a"}) == _ReadsKeywords().load({"name": "a"}) == ("a", "raise")
    assert "(result)" in loader.source  # _quiet never reads its keywords
    assert "(result, partial=None, many=False, unknown='raise')" in loader.source


def test_partial_schema_is_not_compiled() -> None:
    """A schema that loads partially would pass ``partial`` to its hooks: marshmallow keeps it."""
    assert compiled_loader(_Named(partial=True)) is None


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("period", "end"), "2024-01-01T00:00:00+00:00"),  # ends before it starts
        (("provision", "purposes", 0, "code"), "NOT-A-PURPOSE"),  # unknown code in a checked system
        (("provision", "provisions", 1, "security_labels", 0, "code"), "NOPE"),  # nested provision
    ],
)
def test_consent_rules_across_fields_refuse_on_both_paths(path: tuple, value: str) -> None:
    """A consent broken only by a schema-level rule gets marshmallow's errors on the fast path."""
    form = json.loads((ROOT / "examples" / "consent" / "sharing.json").read_text())
    parent: Any = form
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    fast, slow = (
        _outcome(load_consent, copy.deepcopy(form)),
        _outcome(lambda f: load_or_raise(_CONSENT_SCHEMA, f), form),
    )
    assert fast == slow and fast[0] == "error"


def _note_marshmallow_only(form: dict[str, Any]) -> Any:
    return load_or_raise(note_schemas._schema(DEFAULT_FUTURE_TOLERANCE), form)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_forms(notes(), dump_note))
def test_notes_load_alike_on_both_paths(form: dict[str, Any]) -> None:
    """Session notes, valid or broken: same note or same errors at the same paths."""
    assert _outcome(load_note, copy.deepcopy(form)) == _outcome(_note_marshmallow_only, form)


def _in_the_past(record: Any) -> bool:
    now = datetime.now(UTC)
    times = [getattr(record, name, None) for name in ("effective", "written_at", "signed_at")]
    return all(t is None or t <= now for t in times)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        notes().filter(_in_the_past).map(lambda n: (note_schemas._schema, dump_note(n), n)),
        consent_records().map(lambda c: (lambda _: _CONSENT_SCHEMA, dump_consent(c), c)),
    )
)
def test_valid_notes_and_consents_take_the_compiled_path(case: tuple[Any, Any, Any]) -> None:
    """Valid notes and consents are loaded by the generated function, not by the fallback."""
    schema, form, expected = case
    loader = compiled_loader(schema(DEFAULT_FUTURE_TOLERANCE))
    assert loader is not None
    assert loader.fast(form) == expected


# --- inputs built to break each hook's rule -------------------------------------------------------
# Each edit takes a valid form and breaks exactly one rule that a @validates_schema hook (or a
# domain object's check behind a @post_load) enforces; both paths must refuse it alike.

_OTHER_MARKER = {"withdrawal": "complaint-about-therapist", "confrontation": "denial"}


def _ref_without_target(form: dict[str, Any]) -> None:
    form["patient"] = {"type": "Patient"}  # RefSchema: a reference or an identifier


def _client_rater_with_who(form: dict[str, Any]) -> None:
    form["rater"] = {"role": "client", "who": {"reference": "Practitioner/t1"}}


def _therapist_rater_without_who(form: dict[str, Any]) -> None:
    form["rater"] = {"role": "therapist"}


def _automated_rater_without_details(form: dict[str, Any]) -> None:
    form["rater"] = {"role": "automated"}


def _unknown_item(form: dict[str, Any]) -> None:
    form["responses"]["99"] = 1


def _item_off_the_grid(form: dict[str, Any]) -> None:
    form["responses"][next(iter(form["responses"]))] = 3.55


def _items_missing_without_partial(form: dict[str, Any]) -> None:
    first = next(iter(form["responses"]))
    form["responses"] = {first: form["responses"][first]}
    form.pop("partial", None)


def _no_item_answered(form: dict[str, Any]) -> None:
    form["responses"] = {}


def _instrument_rated_by_the_wrong_role(form: dict[str, Any]) -> None:
    if INSTRUMENTS[InstrumentCode(form["instrument"])].client_rated:
        form["rater"] = {"role": "therapist", "who": {"reference": "Practitioner/t1"}}
    else:
        form["rater"] = {"role": "client"}


def _value_off_the_scale(form: dict[str, Any]) -> None:
    form["value"] = 1000


def _marker_of_the_other_rupture_type(form: dict[str, Any]) -> None:
    form["markers"] = [_OTHER_MARKER[form["rupture_type"]]]


def _marker_repeated(form: dict[str, Any]) -> None:
    form["markers"] = ["misattunement", "misattunement"]


def _strategies_without_repair(form: dict[str, Any]) -> None:
    form["repaired"] = False
    form["repair_strategies"] = ["names-rupture"]


def _final_note_unsigned(form: dict[str, Any]) -> None:
    form["status"] = "final"
    form.pop("signed_by", None)
    form["signed_at"] = form["written_at"]


def _draft_signed(form: dict[str, Any]) -> None:
    form["status"] = "draft"
    form["signed_by"] = {"reference": "Practitioner/t1"}
    form["signed_at"] = form["written_at"]


def _label_removed_without_ai(form: dict[str, Any]) -> None:
    form.pop("ai_drafting", None)
    form["ai_label_removal"] = {
        "by": {"reference": "Practitioner/t1"},
        "at": form["written_at"],
        "statement": "rewritten entirely",
    }


def _written_before_the_session(form: dict[str, Any]) -> None:
    form["written_at"] = "1999-12-31T00:00:00+00:00"


_ANY_RECORD = st.one_of(administrations(), ratings(), ruptures(), repairs)
_PAST_NOTES = notes().filter(_in_the_past)
_HOOK_RULES = [
    (_ref_without_target, _ANY_RECORD),
    (_client_rater_with_who, st.one_of(ratings(), ruptures(), repairs)),
    (_therapist_rater_without_who, _ANY_RECORD),
    (_automated_rater_without_details, _ANY_RECORD),
    (_unknown_item, administrations()),
    (_item_off_the_grid, administrations()),
    (_items_missing_without_partial, administrations()),
    (_no_item_answered, administrations()),
    (_instrument_rated_by_the_wrong_role, administrations()),
    (_value_off_the_scale, ratings()),
    (_marker_of_the_other_rupture_type, ruptures()),
    (_marker_repeated, ruptures()),
    (_strategies_without_repair, ruptures()),
    (_ref_without_target, _PAST_NOTES),
    (_final_note_unsigned, _PAST_NOTES),
    (_draft_signed, _PAST_NOTES),
    (_label_removed_without_ai, _PAST_NOTES),
    (_written_before_the_session, _PAST_NOTES),
]


@pytest.mark.parametrize(
    ("edit", "valid"), _HOOK_RULES, ids=[edit.__name__.strip("_") for edit, _ in _HOOK_RULES]
)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_each_hook_rule_refuses_alike_on_both_paths(edit: Any, valid: Any, data: Any) -> None:
    """A form broken only by a hook's rule is refused, with marshmallow's errors, on both paths."""
    record = data.draw(valid)
    is_note = not hasattr(record, "rater")
    form = copy.deepcopy(dump_note(record) if is_note else dump_record(record))
    edit(form)
    if is_note:
        fast, slow = (
            _outcome(load_note, copy.deepcopy(form)),
            _outcome(_note_marshmallow_only, form),
        )
    else:
        fast, slow = _outcome(load_record, copy.deepcopy(form)), _outcome(_marshmallow_only, form)
    assert fast == slow
    assert fast[0] == "error"


def _built_at_once(schema: Schema, threads: int) -> tuple[list[Any], list[BaseException]]:
    """``compiled_loader(schema)`` in ``threads`` threads released together: loaders, errors."""
    start = threading.Barrier(threads)
    loaders: list[Any] = []
    errors: list[BaseException] = []

    def build() -> None:
        start.wait()
        try:
            loaders.append(compiled_loader(schema))
        except BaseException as error:
            errors.append(error)

    pool = [threading.Thread(target=build) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return loaders, errors


def test_threads_meeting_a_schema_first_at_once_share_one_loader() -> None:
    """Request threads that load a record of a kind nobody loaded yet build its loader once, one
    thread at a time: CPython 3.11's ast.parse (which building uses) failed in several threads at
    once with a SystemError, a 500 for whichever request hit it."""
    for _ in range(5):
        # A fresh instance: no loader yet.
        schema = _SCHEMAS["instrument-administration"](future_tolerance=DEFAULT_FUTURE_TOLERANCE)
        loaders, errors = _built_at_once(schema, 12)
        assert errors == []
        assert loaders[0] is not None and all(loader is loaders[0] for loader in loaders)
