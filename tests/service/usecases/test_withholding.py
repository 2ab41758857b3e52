"""The one rule for withheld free text (``usecases/withholding.py``): which records the API and the
console withhold text of, decided from the labels the library's mapping gives each record."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from fhir_alliance_service.store.interface import StoredRecord
from fhir_alliance_service.usecases.withholding import (
    PSYCHOTHERAPY_CONTENT_WITHHELD,
    Withheld,
    withheld_text,
    withhold_record_text,
    withhold_resource_text,
)

from fhir_alliance.mapping.registry import mapper_for_kind
from tests.service.usecases.payloads import ROOT, consent, observation, stored

AT = datetime(2026, 12, 1, tzinfo=UTC)
NARRATIVE = "The client went quiet when we spoke of the anniversary."


def _stored(body: dict[str, Any], family: str = "observation") -> StoredRecord:
    return stored(body, family=family, at=AT)


def _note(category: str) -> dict[str, Any]:
    note: dict[str, Any] = json.loads(
        (ROOT / "examples" / "notes" / "psychotherapy-note.json").read_text("utf-8")
    )
    note["category"] = category
    return note


def _repair() -> dict[str, Any]:
    return observation("repair") | {"narrative": NARRATIVE}


def test_session_narrative_is_withheld_from_every_reader() -> None:
    """A rupture's or repair's narrative makes the library label it PSYTHPN: withheld whether or
    not the reader may read note text (an admin key may; nobody may read PSYTHPN content)."""
    for body in (observation("rupture"), _repair()):
        assert body["narrative"]
        for readable in (False, True):
            assert (
                withheld_text(_stored(body), note_text_readable=readable)
                is Withheld.PSYCHOTHERAPY_CONTENT
            ), (body["kind"], readable)


def test_records_without_psythpn_content_are_whole() -> None:
    """No narrative, no PSYTHPN label: nothing withheld. A consent that names PSYTHPN in a
    provision is about that content, not labelled with it (only ``meta.security`` counts)."""
    rupture = observation("rupture")
    del rupture["narrative"]
    for body, family in (
        (rupture, "observation"),
        (observation("repair"), "observation"),
        (observation("srs-administration"), "observation"),
        (consent("sharing"), "consent"),
    ):
        assert withheld_text(_stored(body, family), note_text_readable=False) is None, body["kind"]


def test_a_note_is_withheld_by_its_content() -> None:
    """A psychotherapy note from every reader; a progress note only from one that may not read
    note text."""
    psychotherapy = _stored(_note("psychotherapy-note"), "note")
    progress = _stored(_note("progress-note"), "note")
    for readable in (False, True):
        assert (
            withheld_text(psychotherapy, note_text_readable=readable)
            is Withheld.PSYCHOTHERAPY_CONTENT
        )
    assert withheld_text(progress, note_text_readable=False) is Withheld.NOTE_TEXT
    assert withheld_text(progress, note_text_readable=True) is None


def test_the_rule_reads_the_labels_of_the_resources_given() -> None:
    """A caller that has mapped the record (the console, for the server's version) passes the
    resources; their ``meta.security`` decides."""
    body = observation("rupture")
    mapper = mapper_for_kind(body["kind"])
    resources = mapper.to_fhir(mapper.load(body), version="5.0.0")
    assert (
        withheld_text(_stored(body), resources=resources, note_text_readable=True)
        is Withheld.PSYCHOTHERAPY_CONTENT
    )
    unlabelled = [r | {"meta": {"security": []}} for r in resources]
    assert withheld_text(_stored(body), resources=unlabelled, note_text_readable=True) is None


def test_a_record_that_no_longer_maps_is_withheld() -> None:
    """Deny by default: when the labels cannot be read, free text counts as PSYTHPN content."""
    broken = observation("srs-administration") | {"tension": "?", "narrative": NARRATIVE}
    assert withheld_text(_stored(broken), note_text_readable=True) is Withheld.PSYCHOTHERAPY_CONTENT


def test_withholding_a_records_json_replaces_the_narrative_only() -> None:
    body = _repair()
    before = copy.deepcopy(body)
    shown = withhold_record_text(body, PSYCHOTHERAPY_CONTENT_WITHHELD)
    assert body == before
    assert shown == before | {"narrative": PSYCHOTHERAPY_CONTENT_WITHHELD}


def test_withholding_an_observation_replaces_its_note_and_keeps_the_rest() -> None:
    """The Observation's ``note`` (where the narrative goes) reads the marker; labels, components
    and references stay; the mapper's output is not changed."""
    body = observation("rupture")
    mapper = mapper_for_kind(body["kind"])
    (resource,) = mapper.to_fhir(mapper.load(body))
    original = json.dumps(resource, sort_keys=True)
    shown = withhold_resource_text(resource, PSYCHOTHERAPY_CONTENT_WITHHELD)
    assert json.dumps(resource, sort_keys=True) == original
    assert body["narrative"] not in json.dumps(shown)
    assert shown["note"] == [{"text": PSYCHOTHERAPY_CONTENT_WITHHELD}]
    assert {k: v for k, v in shown.items() if k != "note"} == {
        k: v for k, v in resource.items() if k != "note"
    }
