"""The FHIR value readers shared by the mappings: what ``read_instant`` reads, and what it refuses
because a wrong time could come out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fhir_alliance.errors import MappingError
from fhir_alliance.mapping._fhir_values import read_instant

PATH = "QuestionnaireResponse.authored"


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-20T15:50:00",  # FHIR: a time SHALL have an offset
        "2026-11-20T15:50:00.250",
        "2026-11-20T15:50",
        "2026-11-20",  # a date: no time of day to read
        "2026-11",
        "2026",
        "2026-11-20 15:50:00Z",  # no T: not a FHIR dateTime
    ],
)
def test_a_time_without_a_zone_or_a_date_alone_is_refused_never_read_as_local_time(
    text: str,
) -> None:
    """No offset, no instant: the reader would otherwise pick its own time zone and shift every
    such time by it (a consent checked, a session dated, in the wrong hour)."""
    with pytest.raises(MappingError) as caught:
        read_instant(text, PATH)
    assert caught.value.element == PATH


@pytest.mark.parametrize(
    "text",
    ["2026-11-20T15:50:00+01:00:30", "2026-11-20T15:50:00+14:30", "2026-11-20T15:50:00-15:00"],
)
def test_an_offset_fhir_cannot_carry_is_refused(text: str) -> None:
    """Seconds in the offset, or beyond ±14:00: refused at the element, as in the JSON forms."""
    with pytest.raises(MappingError) as caught:
        read_instant(text, PATH)
    assert caught.value.element == PATH
    assert "UTC offset" in caught.value.message


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-11-20T15:50:00Z", datetime(2026, 11, 20, 15, 50, tzinfo=UTC)),
        ("2026-11-20T15:50:00.123+01:00", datetime(2026, 11, 20, 14, 50, 0, 123000, tzinfo=UTC)),
        ("2026-11-20T15:50:00-00:00", datetime(2026, 11, 20, 15, 50, tzinfo=UTC)),
        ("2026-11-20T15:50:00+14:00", datetime(2026, 11, 20, 1, 50, tzinfo=UTC)),
        # ISO 8601 spellings FHIR does not use, each naming one instant: read as it
        ("2026-11-20T15:50Z", datetime(2026, 11, 20, 15, 50, tzinfo=UTC)),
        ("2026-11-20T15:50:00+01", datetime(2026, 11, 20, 14, 50, tzinfo=UTC)),
        ("2026-11-20T15:50:00+0100", datetime(2026, 11, 20, 14, 50, tzinfo=UTC)),
        ("2026-11-20T15:50:00.1234567Z", datetime(2026, 11, 20, 15, 50, 0, 123456, tzinfo=UTC)),
    ],
)
def test_a_time_with_its_offset_is_read_as_the_instant_it_names(
    text: str, instant: datetime
) -> None:
    """Conformant times, and the lenient spellings, give exactly the instant written, offset
    kept."""
    read = read_instant(text, PATH)
    assert read == instant
    assert read.utcoffset() is not None


def test_the_offset_written_is_kept_not_converted() -> None:
    """The offset stays as written (a session at 15:50 local time, +05:30, reads as such)."""
    read = read_instant("2026-11-20T15:50:00+05:30", PATH)
    assert read.utcoffset() == timedelta(hours=5, minutes=30)
    assert read.tzinfo == timezone(timedelta(hours=5, minutes=30))
