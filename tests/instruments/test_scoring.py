"""Scoring vectors hand-computed from the published keys, cutoffs and the partial-administration rule."""

from decimal import Decimal

import pytest

from fhir_alliance.instruments import (
    Flag,
    InstrumentCode,
    ReliableChange,
    ScoringRules,
    instrument,
    ors_reliable_change,
    score,
)

D = Decimal


def _by_key(scores):
    return {s.key: s for s in scores}


def test_wai_sr_subscales_follow_published_noncontiguous_keys() -> None:
    """Task = 1,2,10,12; Bond = 3,5,7,9; Goal = 4,6,8,11 (not blocks of four)."""
    # Item n answered with a value that tells the key apart from contiguous blocks.
    answers = {1: 5, 2: 5, 3: 1, 4: 3, 5: 1, 6: 3, 7: 1, 8: 3, 9: 1, 10: 5, 11: 3, 12: 5}
    scores = _by_key(score("wai-sr", {k: D(v) for k, v in answers.items()}))
    assert scores["task"].value == D(20)
    assert scores["bond"].value == D(4)
    assert scores["goal"].value == D(12)
    assert scores["total"].value == D(36)
    assert scores["task"].code == "wai-sr.task"


def test_wai_sr_second_vector() -> None:
    """Items 1..12 answered 1,2,3,4,5,1,2,3,4,5,1,2 give task 10, bond 14, goal 9, total 33."""
    values = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]
    scores = _by_key(score("wai-sr", {i + 1: D(v) for i, v in enumerate(values)}))
    # task: items 1,2,10,12 -> 1+2+5+2 = 10; bond: 3,5,7,9 -> 3+5+2+4 = 14; goal: 4,6,8,11 -> 4+1+3+1 = 9
    assert (scores["task"].value, scores["bond"].value, scores["goal"].value) == (
        D(10),
        D(14),
        D(9),
    )
    assert scores["total"].value == D(33)


def test_wai_sr_prorates_a_subscale_with_one_missing_item() -> None:
    """Three of four bond items answered: bond = mean x 4, rounded half-up to one decimal."""
    answers = {n: D(4) for n in range(1, 13)}
    answers[3], answers[5], answers[7] = D(5), D(4), D(4)
    del answers[9]
    scores = _by_key(score("wai-sr", answers))
    assert scores["bond"].value == D("17.3")  # 13 / 3 * 4 = 17.333...
    assert scores["bond"].prorated
    assert scores["total"].value == D("49.3")  # 16 + 17.3 + 16
    assert not scores["task"].prorated


def test_wai_sr_subscale_with_two_missing_items_is_not_computable() -> None:
    """Two missing items in one subscale: that subscale and the total are not computable."""
    answers = {n: D(3) for n in range(1, 13) if n not in (4, 6)}
    scores = _by_key(score("wai-sr", answers))
    assert scores["goal"].value is None
    assert scores["total"].value is None
    assert scores["task"].value == D(12)


def test_wai_sr_minimum_is_configurable() -> None:
    """A stricter rule (all four items) makes a one-missing subscale not computable."""
    answers = {n: D(3) for n in range(1, 12)}
    scores = _by_key(score("wai-sr", answers, ScoringRules(wai_min_items_per_subscale=4)))
    assert scores["task"].value is None


def test_srs_total_below_36_flags_by_default() -> None:
    """SRS 8.9+9+9+9 = 35.9 is below 36 and flags; 36.0 does not flag under the default < 36 rule."""
    low = _by_key(score("srs", {1: D("8.9"), 2: D(9), 3: D(9), 4: D(9)}))["total"]
    assert low.value == D("35.9")
    assert low.flag is Flag.BELOW_CUTOFF
    exact = _by_key(score("srs", {1: D(9), 2: D(9), 3: D(9), 4: D(9)}))["total"]
    assert exact.value == D(36)
    assert exact.flag is Flag.NORMAL


def test_srs_inclusive_cutoff_flags_36() -> None:
    """With the <= 36 rule configured, a total of exactly 36 flags."""
    rules = ScoringRules(srs_cutoff_inclusive=True)
    total = _by_key(score("srs", {n: D(9) for n in range(1, 5)}, rules))["total"]
    assert total.flag is Flag.BELOW_CUTOFF


def test_srs_with_a_missing_item_is_not_computable() -> None:
    """Three of four SRS items: the total is not computable and not flagged."""
    total = _by_key(score("srs", {1: D(9), 2: D(9), 3: D(9)}))["total"]
    assert total.value is None and total.flag is None and not total.computable


def test_ors_clinical_cutoff_25() -> None:
    """ORS 6+6+6+6.9 = 24.9 is in the clinical range; 25.0 is not."""
    low = score("ors", {1: D(6), 2: D(6), 3: D(6), 4: D("6.9")})[0]
    assert (low.value, low.flag, low.cutoff) == (D("24.9"), Flag.BELOW_CUTOFF, D(25))
    ok = score("ors", {1: D(6), 2: D(6), 3: D(6), 4: D(7)})[0]
    assert ok.flag is Flag.NORMAL


def test_ors_reliable_change_is_plus_minus_five() -> None:
    """A change of 5 or more either way is reliable; 4.9 is not."""
    assert ors_reliable_change(D(20), D(25)) is ReliableChange.IMPROVED
    assert ors_reliable_change(D(25), D(20)) is ReliableChange.DETERIORATED
    assert ors_reliable_change(D(20), D("24.9")) is ReliableChange.NO_RELIABLE_CHANGE


def test_wai_sr_t_scores_total_only_with_proration() -> None:
    """The therapist form gives a total (prorated with 11 of 12 items) and no subscales."""
    scores = score("wai-sr-t", {n: D(4) for n in range(1, 12)})
    assert [s.key for s in scores] == ["total"]
    assert scores[0].value == D(48)
    assert scores[0].prorated


@pytest.mark.parametrize(
    ("code", "answers"),
    [
        ("srs", {1: 11, 2: 9, 3: 9, 4: 9}),  # above the 0..10 line
        ("ors", {1: -0.5, 2: 9, 3: 9, 4: 9}),  # below it
        ("srs", {1: 9.15, 2: 9, 3: 9, 4: 9}),  # off the 0.1 grid
        ("wai-sr", {n: 3 for n in range(1, 12)} | {12: 6}),  # a 1..5 Likert item
        ("wai-sr", {n: 3 for n in range(1, 12)} | {12: D("2.5")}),  # not a whole answer
        ("srs", {1: float("nan"), 2: 9, 3: 9, 4: 9}),
    ],
)
def test_an_answer_off_the_items_scale_raises_value_error_naming_the_item(
    code: str, answers: dict[int, object]
) -> None:
    """``score(code, responses)`` refuses an answer the item cannot take instead of summing it
    into a total no one could have given (an SRS of 38 with an 11 in it)."""
    bad = next(n for n, v in answers.items() if v not in (3, 9))
    with pytest.raises(ValueError, match=f"item {bad} of {code}"):
        score(code, answers)  # type: ignore[arg-type]


def test_unknown_item_number_is_refused() -> None:
    """An item number the instrument does not have raises ValueError."""
    with pytest.raises(ValueError, match="unknown item"):
        score("srs", {5: D(1)})


@pytest.mark.parametrize(
    ("value", "ok"), [("0", True), ("10", True), ("9.9", True), ("9.95", False), ("10.1", False)]
)
def test_vas_items_accept_one_decimal_in_range(value: str, ok: bool) -> None:
    """SRS items take 0..10 with at most one decimal."""
    assert instrument(InstrumentCode.SRS).items[0].accepts(D(value)) is ok


def test_score_accepts_a_record() -> None:
    """score(record) scores an administration directly, with the same result as code + answers."""
    import json
    from pathlib import Path

    from fhir_alliance.schemas.observations import load_record

    example = Path(__file__).resolve().parents[2] / "examples/observations/srs-administration.json"
    record = load_record(json.loads(example.read_text()))
    assert score(record) == score(record.instrument, record.answers())
    rules = ScoringRules(srs_cutoff=D(30))
    (total,) = score(record, rules=rules)
    assert total.cutoff == D(30) and total.flag is Flag.NORMAL


def test_score_of_a_record_with_responses_too_is_an_error() -> None:
    """Giving a record and separate responses is ambiguous and refused."""
    import json
    from pathlib import Path

    from fhir_alliance.schemas.observations import load_record

    example = Path(__file__).resolve().parents[2] / "examples/observations/srs-administration.json"
    record = load_record(json.loads(example.read_text()))
    with pytest.raises(TypeError):
        score(record, record.answers())


def test_score_accepts_plain_numbers_as_written() -> None:
    """Answers given as int or float score exactly as the same Decimals do (9.1 is 9.1, not a binary
    fraction); a boolean is not a number."""
    (from_floats,) = score("srs", {1: 9.1, 2: 8.7, 3: 8, 4: 9.2})
    (from_decimals,) = score("srs", {1: D("9.1"), 2: D("8.7"), 3: D(8), 4: D("9.2")})
    assert from_floats == from_decimals
    assert from_floats.value == D("35.0")
    with pytest.raises(TypeError):
        score("srs", {1: True, 2: 8, 3: 8, 4: 8})
