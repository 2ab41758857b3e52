"""Structure of the alliance instruments: item codes, answer ranges and scoring keys, never item text.

Item wording of WAI-SR, SRS and ORS is licensed; a clinic holding a licence loads it locally. Codes
live in our CodeSystem :data:`~fhir_alliance.terminology.CS_ALLIANCE_MEASURES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from fhir_alliance.terminology import canonical

__all__ = [
    "INSTRUMENTS",
    "Instrument",
    "InstrumentCode",
    "ItemSpec",
    "Subscale",
    "instrument",
]


class InstrumentCode(StrEnum):
    """The instruments we carry; values are the panel codes in our CodeSystem."""

    WAI_SR = "wai-sr"
    WAI_SR_T = "wai-sr-t"
    SRS = "srs"
    ORS = "ors"


@dataclass(frozen=True, slots=True)
class ItemSpec:
    """One item: its number (1-based, as printed on the form), answer range and resolution."""

    number: int
    minimum: Decimal
    maximum: Decimal
    #: Smallest step between answers: ``1`` for Likert items, ``0.1`` for visual-analogue items.
    step: Decimal

    @property
    def integral(self) -> bool:
        return self.step == 1

    def accepts(self, value: Decimal) -> bool:
        """Whether ``value`` is in range and on the item's grid (e.g. one decimal for VAS items)."""
        if not value.is_finite() or not self.minimum <= value <= self.maximum:
            return False
        return (value - self.minimum) % self.step == 0


@dataclass(frozen=True, slots=True)
class Subscale:
    """A subscale: a name used in codes (``wai-sr.bond``) and the item numbers it sums."""

    key: str
    items: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Instrument:
    code: InstrumentCode
    #: Short display for the panel code; no item text.
    display: str
    items: tuple[ItemSpec, ...]
    subscales: tuple[Subscale, ...] = ()
    #: True when the instrument is rated by the client (SRS, ORS, WAI-SR client form).
    client_rated: bool = True
    #: Each item under its number written as a JSON form's ``responses`` key (``"7"``).
    items_by_key: Mapping[str, ItemSpec] = field(init=False, repr=False, compare=False)
    #: ``(key, number)`` of every item, in the instrument's order.
    item_keys: tuple[tuple[str, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items_by_key", {str(i.number): i for i in self.items})
        object.__setattr__(self, "item_keys", tuple((str(i.number), i.number) for i in self.items))

    @property
    def questionnaire_url(self) -> str:
        """Canonical of the structure-only Questionnaire shipped in ``profiles/``."""
        return canonical("Questionnaire", self.code.value)

    @property
    def item_numbers(self) -> tuple[int, ...]:
        return tuple(i.number for i in self.items)

    def item(self, number: int) -> ItemSpec | None:
        for spec in self.items:
            if spec.number == number:
                return spec
        return None

    def item_code(self, number: int) -> str:
        return f"{self.code.value}.{number}"

    def score_code(self, key: str) -> str:
        return f"{self.code.value}.{key}"

    @property
    def total_minimum(self) -> Decimal:
        return sum((i.minimum for i in self.items), Decimal(0))

    @property
    def total_maximum(self) -> Decimal:
        return sum((i.maximum for i in self.items), Decimal(0))


def _likert(count: int, low: int, high: int) -> tuple[ItemSpec, ...]:
    return tuple(ItemSpec(n, Decimal(low), Decimal(high), Decimal(1)) for n in range(1, count + 1))


def _vas(count: int) -> tuple[ItemSpec, ...]:
    return tuple(ItemSpec(n, Decimal(0), Decimal(10), Decimal("0.1")) for n in range(1, count + 1))


#: Published keys (Hatcher & Gillaspy 2006): the subscales are NOT contiguous blocks of items.
WAI_SR_SUBSCALES = (
    Subscale("task", (1, 2, 10, 12)),
    Subscale("bond", (3, 5, 7, 9)),
    Subscale("goal", (4, 6, 8, 11)),
)

INSTRUMENTS: dict[InstrumentCode, Instrument] = {
    InstrumentCode.WAI_SR: Instrument(
        InstrumentCode.WAI_SR,
        "Working Alliance Inventory - Short Revised, client form",
        _likert(12, 1, 5),
        WAI_SR_SUBSCALES,
    ),
    # The therapist form's subscale key is not verified against a second source: we score its
    # total only (see docs/observations.md) rather than guess which items form which subscale.
    InstrumentCode.WAI_SR_T: Instrument(
        InstrumentCode.WAI_SR_T,
        "Working Alliance Inventory - Short Revised, therapist form",
        _likert(12, 1, 5),
        (),
        client_rated=False,
    ),
    InstrumentCode.SRS: Instrument(InstrumentCode.SRS, "Session Rating Scale v3", _vas(4)),
    InstrumentCode.ORS: Instrument(InstrumentCode.ORS, "Outcome Rating Scale", _vas(4)),
}


def instrument(code: InstrumentCode | str) -> Instrument:
    """The instrument for ``code``; raises ``KeyError`` for an unknown code."""
    return INSTRUMENTS[InstrumentCode(code)]
