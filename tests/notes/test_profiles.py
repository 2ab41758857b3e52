"""Our session-note profiles: the built CodeSystems match the model, and the test FHIR server (our
StructureDefinitions loaded, meta.profile enforced) accepts what the mapping makes and refuses
what breaks the profiles."""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fhir_alliance import terminology as t
from fhir_alliance.mapping.note import to_fhir
from fhir_alliance.model.notes import DraftingInput, NoteCategory
from fhir_alliance.schemas.notes import load_note
from tests.notes.note_strategies import notes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "notes").glob("*.json"))
_JSON = {"Content-Type": "application/fhir+json"}


def _put(server, resource: dict):
    return server.http.put(
        server.url(f"{resource['resourceType']}/{resource['id']}"),
        json=server.tagged(resource),
        headers=_JSON,
    )


def _resources(name: str) -> list[dict]:
    return to_fhir(
        load_note(json.loads((ROOT / "examples" / "notes" / f"{name}.json").read_text()))
    )


def test_code_systems_match_the_model() -> None:
    """The built CodeSystems list exactly the model's content kinds and drafting inputs."""
    assert list(t.codes("session-note-content")) == [c.value for c in NoteCategory]
    assert list(t.codes("note-drafting-inputs")) == [i.value for i in DraftingInput]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_server_accepts_every_resource_we_produce(fhir_server, path: Path) -> None:
    """Each example's DocumentReference (and Provenance) is stored under its deterministic id."""
    for resource in to_fhir(load_note(json.loads(path.read_text()))):
        response = _put(fhir_server, resource)
        assert response.status_code in (200, 201), response.text[:1500]
        assert response.json()["id"] == resource["id"]


@pytest.mark.local_fhir_server
def test_server_rejects_a_final_note_without_authenticator(fhir_server) -> None:
    """Invariant session-note-1: a final note must name who signed it."""
    document = _resources("psychotherapy-note")[0]
    del document["authenticator"]
    response = _put(fhir_server, document)
    assert response.status_code == 400, response.text[:1500]
    assert "session-note-1" in response.text


@pytest.mark.local_fhir_server
def test_server_rejects_psychotherapy_content_without_psythpn(fhir_server) -> None:
    """Invariant session-note-3: psychotherapy-note content without PSYTHPN is refused."""
    document = _resources("psychotherapy-note")[0]
    document["meta"]["security"] = [
        label for label in document["meta"]["security"] if label["code"] != "PSYTHPN"
    ]
    response = _put(fhir_server, document)
    assert response.status_code == 400, response.text[:1500]
    assert "session-note-3" in response.text


@pytest.mark.local_fhir_server
def test_server_rejects_a_note_without_hash(fhir_server) -> None:
    """The attachment's hash is required by the profile."""
    document = _resources("ai-drafted-progress-note")[0]
    del document["content"][0]["attachment"]["hash"]
    response = _put(fhir_server, document)
    assert response.status_code == 400, response.text[:1500]


@pytest.mark.local_fhir_server
def test_server_rejects_a_provenance_without_the_device_author(fhir_server) -> None:
    """Invariant session-note-provenance-1: the AI tool must be a Device author."""
    provenance = _resources("ai-drafted-progress-note")[1]
    provenance["agent"][0]["who"] = {"reference": "Practitioner/t1"}
    response = _put(fhir_server, provenance)
    assert response.status_code == 400, response.text[:1500]
    assert "session-note-provenance-1" in response.text


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(note=notes())
def test_server_accepts_any_note_we_produce(fhir_server, note) -> None:
    """Random valid notes (any status, content kind, AI drafting, sections) pass our profiles."""
    for resource in to_fhir(note):
        response = _put(fhir_server, resource)
        assert response.status_code in (200, 201), response.text[:1500]
