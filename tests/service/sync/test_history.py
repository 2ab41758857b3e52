"""Reading a history Bundle page (sync/history.py): what marks a deletion, where the id, version
and stamp come from, and what is refused."""

from __future__ import annotations

import pytest
from fhir_alliance_service.sync.history import HistoryEntry, history_entries

from fhir_alliance.client.links import BaseUrl
from fhir_alliance.errors import InvalidResponseError

BASE = BaseUrl.parse("https://ehr.example/fhir")


def _bundle(*entries: object) -> dict[str, object]:
    return {"resourceType": "Bundle", "type": "history", "entry": list(entries)}


def test_delete_and_410_entries_are_deletions_and_writes_are_not() -> None:
    """A DELETE request, or a 410 response without a request, is a deletion; a write (its
    resource in the entry) is not; ids and versions come from whichever element names them."""
    page = _bundle(
        {
            "resource": {
                "resourceType": "Consent",
                "id": "a",
                "meta": {"versionId": "3", "lastUpdated": "2026-12-01T10:00:03Z"},
            },
            "request": {"method": "PUT", "url": "Consent/a"},
            "response": {"status": "200 OK"},
        },
        {
            "request": {"method": "DELETE", "url": "Consent/b"},
            "response": {"status": "204", "etag": 'W/"2"', "lastModified": "2026-12-01T10:00:02Z"},
        },
        {
            "fullUrl": "https://ehr.example/fhir/Consent/c/_history/5",
            "response": {"status": "410 Gone"},
        },
    )
    assert list(history_entries(page, "Consent", BASE)) == [
        HistoryEntry("a", "3", "2026-12-01T10:00:03Z", deleted=False),
        HistoryEntry("b", "2", "2026-12-01T10:00:02Z", deleted=True),
        HistoryEntry("c", "5", None, deleted=True),
    ]


def test_entries_of_other_types_are_skipped() -> None:
    """A server that mixes other types into a type's history: they are not ours to read."""
    page = _bundle({"request": {"method": "DELETE", "url": "Observation/x"}})
    assert list(history_entries(page, "Consent", BASE)) == []


@pytest.mark.parametrize(
    ("bundle", "element"),
    [
        ({"resourceType": "Bundle", "type": "searchset"}, "Bundle.type"),
        ({"resourceType": "Bundle", "type": "history", "entry": {}}, "Bundle.entry"),
        (_bundle("text"), "Bundle.entry[0]"),
        (_bundle({"resource": []}), "Bundle.entry[0].resource"),
        (_bundle({"request": "DELETE"}), "Bundle.entry[0].request"),
        (_bundle({"request": {"method": "DELETE", "url": "Consent"}}), "Bundle.entry[0]"),
    ],
)
def test_a_malformed_page_is_refused_naming_the_element(
    bundle: dict[str, object], element: str
) -> None:
    """Not a history Bundle, or an entry that names no resource: InvalidResponseError naming the
    element (never "nothing was deleted")."""
    with pytest.raises(InvalidResponseError, match=element.replace("[", r"\[").replace("]", r"\]")):
        list(history_entries(bundle, "Consent", BASE))


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (
            {"request": {"method": "DELETE", "url": "Consent/../Patient/p1"}},
            "Bundle.entry[0].request.url is refused: dot or encoded-slash",
        ),
        (
            {"fullUrl": "https://u:pw@evil.example/fhir/Consent/c1", "response": {"status": "410"}},
            "Bundle.entry[0].fullUrl is refused: it carries credentials",
        ),
        (
            {"response": {"status": "410", "location": "Consent/c%0a1/_history/2"}},
            "Bundle.entry[0].response.location has an invalid FHIR id",
        ),
        (
            {"request": {"method": "DELETE", "url": "Consent/c1/_history/2 junk"}},
            "Bundle.entry[0].request.url has an invalid versionId",
        ),
        (
            {"request": {"method": "DELETE", "url": "Consent/c1"}, "response": {"etag": 'W/"2;x"'}},
            "invalid versionId in history answer's Bundle.entry[0]",
        ),
    ],
)
def test_a_deletion_naming_a_hostile_url_or_version_is_refused(
    entry: dict[str, object], why: str
) -> None:
    """A deletion whose id would come from a URL outside the base, or whose id or version is
    not a FHIR id: InvalidResponseError (the pull then lists instead), never a deletion of it."""
    with pytest.raises(InvalidResponseError) as caught:
        list(history_entries(_bundle(entry), "Consent", BASE))
    assert why in caught.value.message and "evil" not in caught.value.message


@pytest.mark.parametrize("digit", ["\u2074", "\uff14", "\u0664"], ids=["superscript", "fw", "ar"])
def test_a_status_in_other_digits_marks_no_deletion(digit: str) -> None:
    """A response status of another script's digits ("410 Gone" with its 4 a superscript, or
    fullwidth or Arabic-Indic) is no status: the entry is no deletion (it used to raise
    ValueError, failing the pull, or be read as 410)."""
    page = _bundle(
        {
            "fullUrl": "https://ehr.example/fhir/Consent/c/_history/5",
            "response": {"status": f"{digit}10 Gone"},
        }
    )
    assert list(history_entries(page, "Consent", BASE)) == [
        HistoryEntry("c", "5", None, deleted=False)
    ]
