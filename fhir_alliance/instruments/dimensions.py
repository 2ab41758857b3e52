"""Single-dimension alliance ratings (trust, respect, …) and the declared scales they are rated on."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

__all__ = ["DIMENSION_DISPLAY", "SCALES", "Dimension", "RatingScale", "ScaleSpec"]


class Dimension(StrEnum):
    """Codes of our ``alliance-dimensions`` CodeSystem."""

    TRUST = "trust"
    RESPECT = "respect"
    EMOTIONAL_SAFETY = "emotional-safety"
    BOUNDARIES = "boundaries"
    CULTURAL_RESPONSIVENESS = "cultural-responsiveness"
    AUTONOMY = "autonomy"
    COLLABORATION = "collaboration"


DIMENSION_DISPLAY: dict[Dimension, str] = {
    Dimension.TRUST: "Trust",
    Dimension.RESPECT: "Respect",
    Dimension.EMOTIONAL_SAFETY: "Emotional safety",
    Dimension.BOUNDARIES: "Boundaries",
    Dimension.CULTURAL_RESPONSIVENESS: "Cultural responsiveness",
    Dimension.AUTONOMY: "Client autonomy",
    Dimension.COLLABORATION: "Collaboration",
}


class RatingScale(StrEnum):
    """Codes of our ``alliance-rating-scales`` CodeSystem: every rating declares one."""

    LIKERT_1_5 = "likert-1-5"
    LIKERT_1_7 = "likert-1-7"
    NUMERIC_0_10 = "numeric-0-10"
    VAS_0_10 = "vas-0-10"


@dataclass(frozen=True, slots=True)
class ScaleSpec:
    code: RatingScale
    display: str
    minimum: Decimal
    maximum: Decimal
    step: Decimal

    def accepts(self, value: Decimal) -> bool:
        if not value.is_finite() or not self.minimum <= value <= self.maximum:
            return False
        return (value - self.minimum) % self.step == 0


SCALES: dict[RatingScale, ScaleSpec] = {
    RatingScale.LIKERT_1_5: ScaleSpec(
        RatingScale.LIKERT_1_5, "Likert 1-5", Decimal(1), Decimal(5), Decimal(1)
    ),
    RatingScale.LIKERT_1_7: ScaleSpec(
        RatingScale.LIKERT_1_7, "Likert 1-7", Decimal(1), Decimal(7), Decimal(1)
    ),
    RatingScale.NUMERIC_0_10: ScaleSpec(
        RatingScale.NUMERIC_0_10, "Numeric 0-10", Decimal(0), Decimal(10), Decimal(1)
    ),
    RatingScale.VAS_0_10: ScaleSpec(
        RatingScale.VAS_0_10, "Visual analogue 0-10", Decimal(0), Decimal(10), Decimal("0.1")
    ),
}
