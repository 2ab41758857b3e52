"""Scoring of instrument administrations: subscales, totals, cutoffs and reliable change (pure).

Rules for partial administrations (documented in ``docs/observations.md``):

* WAI-SR (client form): a subscale is computable when at least ``wai_min_items_per_subscale``
  (default 3) of its 4 items are answered; its score is then the mean of the answered items times 4
  (prorated), rounded half-up to one decimal. The total is the sum of the three subscale scores and is
  computable only when all three are.
* WAI-SR-T: the total is computable when at least ``wai_t_min_items`` (default 11) of 12 items are
  answered, prorated the same way (subscale keys unverified, so no subscales).
* SRS and ORS: four visual-analogue items; the total is computable only when all four are answered.
  One missing item is a quarter of the scale, too much to prorate.

Not computable scores are returned with ``value=None`` and are not turned into Observations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

from fhir_alliance.instruments.catalog import Instrument, InstrumentCode, instrument

if TYPE_CHECKING:
    from fhir_alliance.model.observations import InstrumentAdministration

__all__ = [
    "DEFAULT_RULES",
    "Flag",
    "ReliableChange",
    "Score",
    "ScoringRules",
    "ors_reliable_change",
    "score",
]

_ONE_DECIMAL = Decimal("0.1")


class Flag(StrEnum):
    """Interpretation of a total against its cutoff (v3-ObservationInterpretation codes)."""

    #: Below the cutoff: SRS possible alliance problem, ORS clinical range.
    BELOW_CUTOFF = "L"
    #: At or above the cutoff.
    NORMAL = "N"


class ReliableChange(StrEnum):
    IMPROVED = "improved"
    DETERIORATED = "deteriorated"
    NO_RELIABLE_CHANGE = "no-reliable-change"


@dataclass(frozen=True, slots=True)
class ScoringRules:
    """Cutoffs and partial-administration minimums; every clinic may set its own."""

    #: SRS total below this flags a possible alliance problem.
    srs_cutoff: Decimal = Decimal(36)
    #: When True, a total *equal* to the cutoff flags too (``<= 36``); default ``< 36``.
    srs_cutoff_inclusive: bool = False
    #: ORS total below this is in the clinical range (adults).
    ors_clinical_cutoff: Decimal = Decimal(25)
    #: An ORS change of at least this size (either way) is reliable.
    ors_reliable_change: Decimal = Decimal(5)
    wai_min_items_per_subscale: int = 3
    wai_t_min_items: int = 11

    def __post_init__(self) -> None:
        if not 1 <= self.wai_min_items_per_subscale <= 4:
            raise ValueError("wai_min_items_per_subscale must be 1..4")
        if not 1 <= self.wai_t_min_items <= 12:
            raise ValueError("wai_t_min_items must be 1..12")


DEFAULT_RULES = ScoringRules()


@dataclass(frozen=True, slots=True)
class Score:
    """One computed score. ``key`` is ``total`` or a subscale key; ``code`` is our score code."""

    code: str
    key: str
    value: Decimal | None
    items_answered: int
    items_expected: int
    minimum: Decimal
    maximum: Decimal
    #: Cutoff the ``flag`` was computed against (totals of SRS and ORS only).
    cutoff: Decimal | None = None
    flag: Flag | None = None
    #: True when a value *equal* to the cutoff is flagged too (``srs_cutoff_inclusive``).
    cutoff_inclusive: bool = False

    @property
    def computable(self) -> bool:
        return self.value is not None

    @property
    def prorated(self) -> bool:
        return self.value is not None and self.items_answered < self.items_expected


def _as_decimal(value: object) -> Decimal:
    """An answer as an exact Decimal: a float as written (``9.1`` is 9.1, not its binary value)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(str(value))
    raise TypeError(f"an answer must be a number, not {type(value).__name__}")


def _round(value: Decimal) -> Decimal:
    return value.quantize(_ONE_DECIMAL, rounding=ROUND_HALF_UP)


def _prorated(values: list[Decimal], expected: int, minimum: int) -> Decimal | None:
    if len(values) < minimum or not values:
        return None
    if len(values) == expected:
        return sum(values, Decimal(0))
    return _round(sum(values, Decimal(0)) / len(values) * expected)


def score(
    code: InstrumentCode | str | InstrumentAdministration,
    responses: Mapping[int, Decimal | int | float] | None = None,
    rules: ScoringRules = DEFAULT_RULES,
) -> tuple[Score, ...]:
    """Scores of one administration: the total first, then subscales in catalogue order.

    Either ``score(record)`` with an :class:`~fhir_alliance.model.observations.InstrumentAdministration`,
    or ``score(code, responses)`` where ``responses`` maps item number → answer (a ``Decimal``, or an
    ``int`` or ``float`` taken as written: ``9.1`` is 9.1); items not in it are unanswered. Values are
    checked against each item's range and resolution as the schema checks them: an answer off the
    item's scale or an unknown item number raises ``ValueError``, a non-number ``TypeError``.
    """
    from fhir_alliance.model.observations import InstrumentAdministration

    if isinstance(code, InstrumentAdministration):
        if responses is not None:
            raise TypeError("score(record) takes its responses from the record; give no others")
        record = code
        code, responses = record.instrument, record.answers()
    elif responses is None:
        raise TypeError("score(code, responses) needs the responses")
    answers = {number: _as_decimal(value) for number, value in responses.items()}
    inst = instrument(code)
    unknown = set(answers) - set(inst.item_numbers)
    if unknown:
        raise ValueError(f"unknown item numbers for {inst.code.value}: {sorted(unknown)}")
    for number, value in sorted(answers.items()):
        spec = inst.item(number)
        if spec is not None and not spec.accepts(value):
            raise ValueError(
                f"item {number} of {inst.code.value}: {value} is not an answer it can take "
                f"({spec.minimum}..{spec.maximum}, step {spec.step})"
            )
    if inst.code is InstrumentCode.WAI_SR:
        return _score_wai_sr(inst, answers, rules)
    if inst.code is InstrumentCode.WAI_SR_T:
        values = [answers[n] for n in inst.item_numbers if n in answers]
        total = _prorated(values, len(inst.items), rules.wai_t_min_items)
        return (_total(inst, total, len(values)),)
    values = [answers[n] for n in inst.item_numbers if n in answers]
    total = sum(values, Decimal(0)) if len(values) == len(inst.items) else None
    if inst.code is InstrumentCode.SRS:
        cutoff = rules.srs_cutoff
        inclusive = rules.srs_cutoff_inclusive
    else:
        cutoff = rules.ors_clinical_cutoff
        inclusive = False
    below = total is not None and (total < cutoff or (inclusive and total == cutoff))
    flag = None if total is None else (Flag.BELOW_CUTOFF if below else Flag.NORMAL)
    return (_total(inst, total, len(values), cutoff=cutoff, flag=flag, cutoff_inclusive=inclusive),)


def _total(
    inst: Instrument,
    value: Decimal | None,
    answered: int,
    *,
    cutoff: Decimal | None = None,
    flag: Flag | None = None,
    cutoff_inclusive: bool = False,
) -> Score:
    return Score(
        code=inst.score_code("total"),
        key="total",
        value=value,
        items_answered=answered,
        items_expected=len(inst.items),
        minimum=inst.total_minimum,
        maximum=inst.total_maximum,
        cutoff=cutoff,
        flag=flag,
        cutoff_inclusive=cutoff_inclusive,
    )


def _score_wai_sr(
    inst: Instrument, responses: Mapping[int, Decimal], rules: ScoringRules
) -> tuple[Score, ...]:
    subscales: list[Score] = []
    for sub in inst.subscales:
        values = [responses[n] for n in sub.items if n in responses]
        specs = [inst.item(n) for n in sub.items]
        subscales.append(
            Score(
                code=inst.score_code(sub.key),
                key=sub.key,
                value=_prorated(values, len(sub.items), rules.wai_min_items_per_subscale),
                items_answered=len(values),
                items_expected=len(sub.items),
                minimum=sum((s.minimum for s in specs if s), Decimal(0)),
                maximum=sum((s.maximum for s in specs if s), Decimal(0)),
            )
        )
    total: Decimal | None = None
    if all(s.value is not None for s in subscales):
        total = sum((s.value for s in subscales if s.value is not None), Decimal(0))
    answered = sum(1 for n in inst.item_numbers if n in responses)
    return (_total(inst, total, answered), *subscales)


def ors_reliable_change(
    previous_total: Decimal, current_total: Decimal, rules: ScoringRules = DEFAULT_RULES
) -> ReliableChange:
    """Whether an ORS total changed reliably (by at least ``rules.ors_reliable_change``)."""
    delta = current_total - previous_total
    if delta >= rules.ors_reliable_change:
        return ReliableChange.IMPROVED
    if delta <= -rules.ors_reliable_change:
        return ReliableChange.DETERIORATED
    return ReliableChange.NO_RELIABLE_CHANGE
