"""docs/service.md names every setting and every HTTP route (the README promises "everything else,
the API and every setting, is in docs/service.md"): its settings table has a row for each field of
``Settings`` (``FHIR_ALLIANCE_<FIELD>``) and its API table a row for each route of the app, so a new
setting or route that is not documented fails here. Rows for settings or routes that no longer
exist fail too."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fhir_alliance_service.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
SERVICE_DOC = ROOT / "docs" / "service.md"

#: ``FHIR_ALLIANCE_<NAME>`` or the table's short form ``…_NAME`` (after a full name in the same cell).
_VARIABLE = re.compile(r"(?:FHIR_ALLIANCE|…)_([A-Z0-9_]+)")
#: ``GET /v1/records/{id}`` in a code span; a query string is not part of the route.
_ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]*)")
#: A path parameter, as the docs write it (``{id}``) or as Flask does (``<path:ref>``).
_PARAMETER = re.compile(r"\{[^}]*\}|<[^>]*>")
#: The console's pages are documented in docs/console.md; the API table has one row for them all.
CONSOLE_PREFIX = "/console/"


def _section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading of level 2."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None, f"docs/service.md has no section '## {heading}'"
    return match.group(1)


def _first_cells(section: str) -> list[str]:
    """The first cell of every table row of a section (header and separator rows skipped)."""
    cells = []
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells.append(line.split(" | ", 1)[0])
    return cells


def documented_settings(text: str) -> set[str]:
    """Field names (lower case) of the variables in the first column of the settings table."""
    names: set[str] = set()
    for cell in _first_cells(_section(text, "Settings")):
        names.update(name.lower() for name in _VARIABLE.findall(cell))
    return names


def _normal(path: str) -> str:
    return _PARAMETER.sub("{}", path)


def documented_routes(text: str) -> set[tuple[str, str]]:
    """(method, path with ``{}`` for each parameter) of the first column of the API table."""
    routes: set[tuple[str, str]] = set()
    for cell in _first_cells(_section(text, "The API")):
        routes.update((method, _normal(path)) for method, path in _ROUTE.findall(cell))
    return routes


def setting_fields() -> set[str]:
    return {field.name for field in dataclasses.fields(Settings)}


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, path) of every rule of the app ``serve`` runs; the console's under one prefix."""
    from fhir_alliance_service.app import create_app
    from fhir_alliance_service.store.schema import upgrade

    url = f"sqlite:///{tmp_path / 'routes.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url))
    routes: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        path = _normal(rule.rule)
        if path.startswith(CONSOLE_PREFIX):
            path = CONSOLE_PREFIX + "…"
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.add((method, path))
    return routes


def test_every_setting_is_in_the_settings_table() -> None:
    documented = documented_settings(SERVICE_DOC.read_text(encoding="utf-8"))
    missing = sorted(f"{ENV_PREFIX}{name.upper()}" for name in setting_fields() - documented)
    assert not missing, f"settings missing from docs/service.md's settings table: {missing}"


def test_the_settings_table_names_no_setting_that_does_not_exist() -> None:
    documented = documented_settings(SERVICE_DOC.read_text(encoding="utf-8"))
    stale = sorted(f"{ENV_PREFIX}{name.upper()}" for name in documented - setting_fields())
    assert not stale, f"docs/service.md's settings table names unknown settings: {stale}"


def test_every_route_is_in_the_api_table(tmp_path: Path) -> None:
    documented = documented_routes(SERVICE_DOC.read_text(encoding="utf-8"))
    missing = sorted(f"{m} {p}" for m, p in app_routes(tmp_path) - documented)
    assert not missing, f"routes missing from docs/service.md's API table: {missing}"


def test_the_api_table_names_no_route_that_does_not_exist(tmp_path: Path) -> None:
    documented = documented_routes(SERVICE_DOC.read_text(encoding="utf-8"))
    stale = sorted(f"{m} {p}" for m, p in documented - app_routes(tmp_path))
    assert not stale, f"docs/service.md's API table names unknown routes: {stale}"


@pytest.mark.parametrize(
    ("row", "found"),
    [
        ("| `FHIR_ALLIANCE_PULL_OBSERVATIONS` | `false` | x |", {"pull_observations"}),
        (
            "| `FHIR_ALLIANCE_BACKOFF_BASE_SECONDS`, `…_BACKOFF_MAX_SECONDS` | `1`, `300` | x |",
            {"backoff_base_seconds", "backoff_max_seconds"},
        ),
        # a variable named only in the meaning column is no row of its own
        ("| `FHIR_ALLIANCE_BIND` | `127.0.0.1:8080` | not `FHIR_ALLIANCE_WEB_WORKERS` |", {"bind"}),
    ],
)
def test_the_settings_parser_reads_rows(row: str, found: set[str]) -> None:
    text = (
        f"# t\n\n## Settings\n\n| variable | default | meaning |\n|---|---|---|\n{row}\n\n## Next\n"
    )
    assert documented_settings(text) == found


def test_the_route_parser_reads_rows() -> None:
    text = (
        "## The API\n\n| route | scope | what it does |\n|---|---|---|\n"
        "| `GET /v1/patients/{ref}/decision?recipient=&purpose=` | read | x `POST /nope` |\n"
        "| `GET /cds-services`, `POST /cds-services/patient-consent-consult` | consult | x |\n"
        "\n## Sync states\n\n| `POST /v1/elsewhere` | x | x |\n"
    )
    assert documented_routes(text) == {
        ("GET", "/v1/patients/{}/decision"),
        ("GET", "/cds-services"),
        ("POST", "/cds-services/patient-consent-consult"),
    }


# -- the README's "try it with the examples" -------------------------------------------------

QUICKSTART_CONSENT = ROOT / "examples" / "quickstart" / "sharing-consent.json"
README = ROOT / "README.md"


def _readme_deploy_recipient() -> str:
    match = re.search(r"^\s*export FHIR_ALLIANCE_RECIPIENTS=(\S+)", README.read_text("utf-8"), re.M)
    assert match is not None, "the README's deploy sets no FHIR_ALLIANCE_RECIPIENTS"
    return match.group(1)


def test_the_quickstart_consent_names_the_readme_recipient_and_the_examples_client() -> None:
    """The README's deploy and the examples it posts agree: the consent shares with the recipient
    the deploy exports, for the client the observation examples are about, with no end."""
    consent = json.loads(QUICKSTART_CONSENT.read_text("utf-8"))
    recipient = _readme_deploy_recipient()
    assert recipient in Settings().recipients  # the deploy's value is also the default
    assert [g["reference"] for g in consent["grantees"]] == [recipient]
    assert "end" not in consent.get("period", {})
    patients = {
        json.loads(p.read_text("utf-8"))["patient"]["reference"]
        for p in (ROOT / "examples" / "observations").glob("*.json")
    }
    assert patients == {consent["patient"]["reference"]}


def test_the_readme_status_url_is_the_srs_examples_record() -> None:
    from fhir_alliance.mapping._ids import resource_id
    from fhir_alliance.model.common import Identifier

    srs = json.loads((ROOT / "examples/observations/srs-administration.json").read_text("utf-8"))
    system, _, value = srs["id"].partition("|")
    record_id = resource_id(Identifier(system, value))
    readme = README.read_text("utf-8")
    assert "--data @examples/observations/srs-administration.json" in readme
    assert f"/v1/records/{record_id}/status" in readme


@pytest.mark.parametrize("years_ahead", [0, 10])
def test_the_quickstart_consent_lets_every_observation_example_go(
    tmp_path: Path, years_ahead: int
) -> None:
    """Through intake and the sync's consent gate with the README deploy's settings, today and in
    ten years: after the quickstart consent every observation example goes, but the rupture, whose
    session narrative is psychotherapy-note content (PSYTHPN) that the consent does not name (the
    README says so)."""
    from fhir_alliance_service.store import open_store
    from fhir_alliance_service.store.schema import upgrade
    from fhir_alliance_service.sync.gate import HoldReason, gate_item
    from fhir_alliance_service.usecases.intake import intake_records

    from fhir_alliance.mapping._ids import resource_id
    from fhir_alliance.model.common import Identifier

    url = f"sqlite:///{tmp_path / 'quickstart.db'}"
    upgrade(url)
    settings = Settings(
        database_url=url,
        fhir_base_url="https://ehr.clinic.example/fhir",
        recipients=(_readme_deploy_recipient(),),
    )
    at = datetime.now(UTC) + timedelta(days=366 * years_ahead)
    store = open_store(url)
    try:
        intake_records(store, [json.loads(QUICKSTART_CONSENT.read_text("utf-8"))], at=at)
        [consent] = store.claim("t", limit=1, lease_seconds=60, now=at)
        store.mark_sent(consent.item_id, "t", sent=[], audit=[], at=at)
        paths = sorted((ROOT / "examples" / "observations").glob("*.json"))
        paths.sort(key=lambda p: p.name == "repair.json")  # a repair names its rupture
        for path in paths:
            intake_records(store, [json.loads(path.read_text("utf-8"))], at=at, labels=[path.name])
        items = store.claim("t", limit=100, lease_seconds=60, now=at, per_patient=100)
        assert len(items) == len(paths)
        held = {
            item.record_id: result.hold
            for item in items
            if not (
                result := gate_item(item, settings=settings, store=store, version="4.0.1", at=at)
            ).permitted
        }
        rupture = json.loads((ROOT / "examples/observations/rupture.json").read_text("utf-8"))
        system, _, value = rupture["id"].partition("|")
        assert held == {resource_id(Identifier(system, value)): HoldReason.NEEDS_EXPLICIT_PERMIT}
    finally:
        store.close()
