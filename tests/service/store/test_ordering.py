"""Which of two copies of a remote resource is newer (``store/ordering.py``): numeric version ids
as numbers, else ``meta.lastUpdated``; unsure when they disagree or nothing orders them."""

from __future__ import annotations

import pytest
from fhir_alliance_service.store.ordering import RemoteOrder, remote_order

EARLY = "2026-12-01T10:00:00.000Z"
LATER = "2026-12-01T11:00:00Z"


@pytest.mark.parametrize(
    ("seen", "copy", "order"),
    [
        (("9", EARLY), ("10", LATER), RemoteOrder.NEWER),  # as numbers: not "10" < "9"
        (("10", LATER), ("9", EARLY), RemoteOrder.OLDER),
        (("2", LATER), ("2", LATER), RemoteOrder.SAME),
        (("2", LATER), ("2", EARLY), RemoteOrder.SAME),  # an older stamp of the same version
        (("2", EARLY), ("2", LATER), RemoteOrder.UNSURE),  # changed without a new version id
        (("1", LATER), ("2", EARLY), RemoteOrder.UNSURE),  # version and stamp disagree
        (("1", EARLY), ("2", None), RemoteOrder.NEWER),
        (("a-uuid", EARLY), ("b-uuid", LATER), RemoteOrder.NEWER),
        (("b-uuid", LATER), ("a-uuid", EARLY), RemoteOrder.OLDER),
        (("a-uuid", LATER), ("b-uuid", LATER), RemoteOrder.UNSURE),
        ((None, EARLY), (None, LATER), RemoteOrder.NEWER),  # no version ids: by the stamp
        ((None, LATER), (None, EARLY), RemoteOrder.OLDER),
        ((None, LATER), (None, LATER), RemoteOrder.UNSURE),
        ((None, EARLY), (None, "2026-12-01T10:00:00Z"), RemoteOrder.UNSURE),  # the same instant
        ((None, None), (None, None), RemoteOrder.UNSURE),
        ((None, "not a time"), (None, LATER), RemoteOrder.UNSURE),
    ],
)
def test_remote_order(
    seen: tuple[str | None, str | None], copy: tuple[str | None, str | None], order: RemoteOrder
) -> None:
    """The order of a copy read now against the copy seen before."""
    assert remote_order(*seen, *copy) is order
