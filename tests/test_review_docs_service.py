"""docs/service.md names every setting and every HTTP route (the README promises "everything else,
the API and every setting, is in docs/service.md"): its settings table has a row for each field of
``Settings`` (``FHIR_ALLIANCE_<FIELD>``) and its API table a row for each route of the app, so a new
setting or route that is not documented fails here. Rows for settings or routes that no longer
exist fail too. Beyond it: the defaults, allowed values, secrets, scopes, held reasons, metrics
and commands it gives; the service's commands in service/README.md; every option the commands
tables show (README and docs/service.md), and every option of every command named in the
document that describes it; docs/console.md's pages; and docs/two-way-sync.md's own settings
table. (Every ``FHIR_ALLIANCE_*`` name in the docs being one the service accepts is
tests/service/test_review_ops_settings.py's.)"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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


def app_routes(tmp_path: Path, *, console_pages: bool = False) -> set[tuple[str, str]]:
    """(method, path) of every rule of the app ``serve`` runs; the console's under one prefix
    (or each on its own with ``console_pages``)."""
    from fhir_alliance_service.app import create_app
    from fhir_alliance_service.store.schema import upgrade

    url = f"sqlite:///{tmp_path / 'routes.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url))
    routes: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        path = _normal(rule.rule)
        if path.startswith(CONSOLE_PREFIX) and not console_pages:
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


# -- the settings table's defaults, secrets and the names beside it -------------------------------

#: A default the table writes in words: the setting has no value (None) unless it is set.
_NO_DEFAULT = {"none", "—", "system CAs", "from the server"}


def _settings_rows(text: str) -> list[tuple[list[str], list[str], bool]]:
    """(field names, default cells, marked secret) of each row of the settings table; a row that
    names several variables gives their defaults comma-separated in the same order."""
    rows = []
    for line in _section(text, "Settings").splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        names = [name.lower() for name in _VARIABLE.findall(cells[0])]
        defaults = [d.strip() for d in cells[1].split(", ")] if len(names) > 1 else [cells[1]]
        assert len(defaults) == len(names), f"one default per variable: {line}"
        rows.append((names, defaults, "(secret)" in cells[0]))
    return rows


def test_the_settings_table_gives_the_defaults_the_code_has() -> None:
    """Each default the table shows is the one Settings has: a value in backquotes read as its
    variable would be, or a word that says there is none."""
    from fhir_alliance_service.config import load_settings

    defaults = Settings()
    wrong = []
    for names, cells, _ in _settings_rows(SERVICE_DOC.read_text(encoding="utf-8")):
        for name, cell in zip(names, cells, strict=True):
            actual = getattr(defaults, name)
            if cell in _NO_DEFAULT:
                ok = actual is None
            else:
                value = cell.strip("`")
                ok = getattr(load_settings({f"{ENV_PREFIX}{name.upper()}": value}), name) == actual
            if not ok:
                wrong.append(f"{ENV_PREFIX}{name.upper()}: docs {cell}, code {actual!r}")
    assert not wrong, f"docs/service.md's settings table gives other defaults: {wrong}"


def _allowed_values(name: str) -> list[str] | None:
    """The values a setting with a fixed set of them accepts, as its refusal of another value
    lists them (``expected one of a, b, c, got …``); None for a setting of any value."""
    from fhir_alliance_service.config import ConfigError, load_settings

    try:
        load_settings({f"{ENV_PREFIX}{name.upper()}": "no-such-value"})
    except ConfigError as exc:
        match = re.search(r"expected one of (.*), got ", str(exc))
        return match.group(1).split(", ") if match else None
    return None


def test_the_settings_table_names_every_allowed_value() -> None:
    """A setting that takes one of a few values has them all in its row, each in backquotes, so
    the table never leaves out a policy, algorithm or level the code accepts."""
    text = SERVICE_DOC.read_text(encoding="utf-8")
    rows = {}
    for line in _section(text, "Settings").splitlines():
        if line.startswith("| `"):
            for name in _VARIABLE.findall(line.split(" | ", 1)[0]):
                rows[name.lower()] = line
    choices = {name: _allowed_values(name) for name in sorted(setting_fields())}
    assert choices["conflict_policy"] == ["overwrite", "keep-remote", "flag"]
    missing = [
        f"{ENV_PREFIX}{name.upper()}: `{value}`"
        for name, values in choices.items()
        for value in values or []
        if f"`{value}`" not in rows[name]
    ]
    assert not missing, f"docs/service.md's settings table leaves out allowed values: {missing}"


def test_the_settings_table_marks_exactly_the_secret_settings() -> None:
    """The rows marked (secret) are the settings that may come from a ``…_FILE`` variable and are
    never shown: SECRET_FIELDS."""
    from fhir_alliance_service.config import SECRET_FIELDS

    marked = {
        name
        for names, _, secret in _settings_rows(SERVICE_DOC.read_text(encoding="utf-8"))
        if secret
        for name in names
    }
    assert marked == set(SECRET_FIELDS)


def test_the_other_variables_the_code_accepts_are_named_in_the_docs() -> None:
    """docs/service.md says which FHIR_ALLIANCE_* names besides the settings are accepted ("the
    list is OTHER_VARIABLES in config.py"); each of them is named there."""
    from fhir_alliance_service.config import OTHER_VARIABLES

    text = SERVICE_DOC.read_text(encoding="utf-8")
    missing = sorted(name for name in OTHER_VARIABLES if name not in text)
    assert not missing, f"docs/service.md does not name these accepted variables: {missing}"


def test_the_settings_file_example_loads(tmp_path: Path) -> None:
    """The TOML example under Settings has only known keys with good values (its key file
    replaced by one that exists, mode 0600)."""
    import tomllib

    from fhir_alliance_service.config import load_settings

    text = _section(SERVICE_DOC.read_text(encoding="utf-8"), "Settings")
    match = re.search(r"<<'EOF'\n(.*?)^EOF$", text, re.M | re.S)
    assert match is not None, "the settings section has no TOML example"
    example = tomllib.loads(match.group(1))
    key = tmp_path / "smart-key.pem"
    key.write_text("not read here")
    key.chmod(0o600)
    assert "smart_private_key_file" in example
    example["smart_private_key_file"] = str(key)
    config = tmp_path / "fhir-alliance.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in example.items()))
    settings = load_settings({f"{ENV_PREFIX}CONFIG_FILE": str(config)})
    read = {key: getattr(settings, key) for key in example}
    assert read == {k: tuple(v) if isinstance(v, list) else v for k, v in example.items()}


def test_every_metric_is_named_under_operations(tmp_path: Path) -> None:
    """Operations lists what /metrics gives: every metric family the service exports (the
    store's depth gauges and every per-process counter and histogram) is named there."""
    from fhir_alliance_service.metrics import render_metrics
    from fhir_alliance_service.store import open_store
    from fhir_alliance_service.store.schema import upgrade

    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    upgrade(url)
    store = open_store(url)
    try:
        families = re.findall(r"^# TYPE (\S+) ", render_metrics(store).decode(), re.M)
    finally:
        store.close()
    # prometheus-client adds a ``…_created`` gauge beside each counter and histogram
    exported = {name for name in families if not name.endswith("_created")}
    assert "fhir_alliance_queue_depth" in exported
    operations = _section(SERVICE_DOC.read_text(encoding="utf-8"), "Operations")
    missing = sorted(name for name in exported if name not in operations)
    assert not missing, f"metrics missing from docs/service.md's Operations: {missing}"


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


def test_the_readme_names_the_client_of_every_consent_and_note_example() -> None:
    """The README says the examples of examples/consent/ and examples/notes/ are about
    `Patient/p1`: one about another client (which a clinic posting it meets with a 422, having
    no recording/AI-notes consent for it) is named there as the exception."""
    readme = README.read_text("utf-8")
    start = readme.index("The examples in `examples/consent/`")
    paragraph = readme[start : readme.index("\n\n", start)]
    assert "`Patient/p1`" in paragraph
    others = [
        path.name
        for folder in ("consent", "notes")
        for path in sorted((ROOT / "examples" / folder).glob("*.json"))
        if json.loads(path.read_text("utf-8"))["patient"].get("reference") != "Patient/p1"
    ]
    unnamed = [name for name in others if f"/{name}`" not in paragraph]
    assert not unnamed, f"examples about another client than Patient/p1, unnamed: {unnamed}"


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


# -- every command is documented ----------------------------------------------------------------


def _commands(parser: object, prefix: str = "") -> set[str]:
    """``name`` of every subcommand of ``parser`` (``db upgrade`` for a nested one)."""
    import argparse

    found: set[str] = set()
    for action in getattr(parser, "_actions", []):
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix}{name} ")
                found.update(nested or {f"{prefix}{name}"})
    return found


def _table_commands(section: str) -> set[str]:
    """Command names in the first column of a table: ``fhir-alliance NAME …`` and, after it in
    the same cell, further backquoted ``NAME …``; the first word or two (``db upgrade``) that are
    no option or argument."""
    names: set[str] = set()
    for cell in _first_cells(section):
        for span in re.findall(r"`([^`]*)`", cell):
            words = span.removeprefix("fhir-alliance ").split()
            if not words or not re.fullmatch(r"[a-z][a-z-]*", words[0]):
                continue
            names.add(words[0])
            if len(words) > 1 and re.fullmatch(r"[a-z][a-z-]*", words[1]):
                names.add(f"{words[0]} {words[1]}")
    return names


def test_every_command_is_in_the_readme_table() -> None:
    """The README's command-line table names every subcommand ``fhir-alliance --help`` lists
    (the library's and the service's)."""
    from fhir_alliance.cli import build_parser

    top = {name.split()[0] for name in _commands(build_parser())}
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## The command line\s*$(.*?)(?=^## )", text, re.M | re.S)
    assert match is not None
    missing = sorted(top - _table_commands(match.group(1)))
    assert not missing, f"commands missing from the README's command-line table: {missing}"


def test_every_service_command_is_in_the_commands_table() -> None:
    """docs/service.md's Commands table has a row for every command the service adds (``db``'s
    own subcommands one by one)."""
    import argparse

    from fhir_alliance_service.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    documented = _table_commands(_section(SERVICE_DOC.read_text(encoding="utf-8"), "Commands"))
    missing = sorted(_commands(parser) - documented)
    assert not missing, f"service commands missing from docs/service.md's Commands: {missing}"


def _command_rows(section: str) -> list[tuple[str, str]]:
    """(the command a row documents, the row) for each row of a table whose first cell starts
    with ``fhir-alliance NAME`` (``db upgrade`` for a nested one)."""
    rows: list[tuple[str, str]] = []
    for line in section.splitlines():
        match = re.match(r"\| `fhir-alliance ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", line)
        if match is not None:
            rows.append((" ".join(w for w in match.groups() if w), line))
    return rows


def test_each_command_has_one_row_in_the_commands_table() -> None:
    """docs/service.md's Commands table documents each command in one row: two rows of one
    command (``pull`` and ``subscribe`` had two, which said different things) leave a reader to
    guess which is true."""
    rows = _command_rows(_section(SERVICE_DOC.read_text(encoding="utf-8"), "Commands"))
    names = [name for name, _ in rows]
    repeated = sorted({name for name in names if names.count(name) > 1})
    assert not repeated, f"commands with more than one row in docs/service.md: {repeated}"


def test_the_subscribe_row_asks_for_a_notify_key() -> None:
    """The key ``subscribe --key-env`` stores in the Subscription needs scope ``notify`` (what
    ``subscribe`` itself advises; ``write`` and ``admin`` include it); the row never asks for
    scope ``write``, a key that could also post consents."""
    rows = _command_rows(_section(SERVICE_DOC.read_text(encoding="utf-8"), "Commands"))
    [row] = [row for name, row in rows if name == "subscribe"]
    assert "API key of scope `notify`" in row
    assert "scope `write`" not in row


def test_the_service_readme_names_every_service_command() -> None:
    """service/README.md lists the subcommands the service adds: all of them (``db``'s own
    subcommands one by one), each in backquotes."""
    import argparse

    from fhir_alliance_service.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    text = (ROOT / "service" / "README.md").read_text(encoding="utf-8")
    missing = sorted(name for name in _commands(parser) if f"`{name}`" not in text)
    assert not missing, f"service commands missing from service/README.md: {missing}"


# -- the held reasons an operator reads in the status -------------------------------------------


def test_every_held_reason_is_in_the_held_reasons_table() -> None:
    """The status, ``fhir-alliance status`` and the console show a held record's ``held_reason``
    in words; docs/service.md's table under Sync states quotes each of them word for word (the
    gate's reasons and the conflict policy's), so an operator can look up what they read."""
    from fhir_alliance_service.sync.gate import HoldReason
    from fhir_alliance_service.sync.worker import CONFLICT_HELD_REASON

    section = _section(SERVICE_DOC.read_text(encoding="utf-8"), "Sync states")
    quoted = set(_first_cells(section))
    reasons = {reason.words for reason in HoldReason} | {CONFLICT_HELD_REASON}
    missing = sorted(reasons - {cell.strip("| ") for cell in quoted})
    assert not missing, f"held reasons missing from docs/service.md's Sync states: {missing}"


# -- scopes, flags and the settings named anywhere in the docs ----------------------------------


def _api_rows(text: str) -> list[tuple[list[tuple[str, str]], str]]:
    """(routes, scope cell) of each row of the API table."""
    rows = []
    for line in _section(text, "The API").splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        routes = [(method, _normal(path)) for method, path in _ROUTE.findall(cells[0])]
        rows.append((routes, cells[1]))
    return rows


def test_the_api_table_gives_each_route_the_scope_it_declares(tmp_path: Path) -> None:
    """The scope column of docs/service.md's API table is the scope each view declares
    (``auth.require_scope``; ``none`` for the public health checks); the console's pages have a
    row of their own in docs/console.md."""
    from fhir_alliance_service.app import create_app
    from fhir_alliance_service.auth import PUBLIC, declared_scope
    from fhir_alliance_service.store.schema import upgrade

    url = f"sqlite:///{tmp_path / 'scopes.db'}"
    upgrade(url)
    app = create_app(Settings(database_url=url))
    declared = {
        (method, _normal(rule.rule)): declared_scope(app.view_functions[rule.endpoint])
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    wrong = []
    for routes, cell in _api_rows(SERVICE_DOC.read_text(encoding="utf-8")):
        for route in routes:
            if route[1].startswith(CONSOLE_PREFIX):
                continue
            scope = declared[route]
            if cell != ("none" if scope == PUBLIC else scope):
                wrong.append(f"{route[0]} {route[1]}: docs {cell!r}, code {scope!r}")
    assert not wrong, f"docs/service.md's API table gives other scopes: {wrong}"


CONSOLE_DOC = ROOT / "docs" / "console.md"


def _console_table_pages(text: str) -> set[str]:
    """The path (``{}`` for each parameter) in the URL column of docs/console.md's Pages table."""
    pages = set()
    for line in _section(text, "Pages").splitlines():
        if line.startswith("| ") and not set(line) <= set("|-: "):
            pages.update(_normal(path) for path in re.findall(r"`(/console/[^`]*)`", line))
    return pages


def test_every_console_page_is_in_the_pages_table(tmp_path: Path) -> None:
    """docs/console.md's Pages table has a row for each page the console serves (``GET``, its
    stylesheets aside), and no row for a page it does not serve."""
    pages = {
        path
        for method, path in app_routes(tmp_path, console_pages=True)
        if method == "GET" and path.startswith(CONSOLE_PREFIX) and "/static/" not in path
    }
    documented = _console_table_pages(CONSOLE_DOC.read_text(encoding="utf-8"))
    assert "/console/records/{}" in pages
    assert documented == pages


def _subcommand(parser: Any, words: list[str]) -> Any:
    """The parser of ``fhir-alliance WORDS…`` (``db upgrade`` nested), or None."""
    import argparse

    for word in words:
        found = None
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and word in action.choices:
                found = action.choices[word]
        if found is None:
            return parser
        parser = found
    return parser


def _documented_flags(section: str) -> list[tuple[str, str]]:
    """(command, flag) for every ``--flag`` in a command's code span in a table's first column."""
    found = []
    for cell in _first_cells(section):
        for span in re.findall(r"`([^`]*)`", cell):
            words = span.removeprefix("fhir-alliance ").split()
            if not words or not re.fullmatch(r"[a-z][a-z-]*", words[0]):
                continue
            command = " ".join(w for w in words[:2] if re.fullmatch(r"[a-z][a-z-]*", w))
            found += [(command, flag) for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", span)]
    return found


@pytest.mark.parametrize(
    ("doc", "heading", "example"),
    [
        (README, "The command line", ("map", "--ndjson")),
        (SERVICE_DOC, "Commands", ("serve", "--workers")),
    ],
    ids=["README", "service"],
)
def test_every_documented_flag_exists(doc: Path, heading: str, example: tuple[str, str]) -> None:
    """Each ``--flag`` a commands table shows is an option of that command."""
    from fhir_alliance.cli import build_parser

    parser = build_parser()
    text = doc.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None
    flags = _documented_flags(match.group(1))
    assert example in flags
    unknown = []
    for command, flag in flags:
        sub = _subcommand(parser, command.split())
        if flag not in sub._option_string_actions:
            unknown.append(f"{command} {flag}")
    assert not unknown, f"{doc.name} shows options the commands do not have: {unknown}"


#: Where each of the library's commands is documented; the service's are in docs/service.md.
#: ``push`` takes ``check``'s server options, which docs/client.md describes.
LIBRARY_COMMAND_DOCS = {
    "map": ["observations.md"],
    "export": ["observations.md"],
    "push": ["observations.md", "client.md"],
    "decide": ["consent-decisions.md"],
    "check": ["client.md"],
}


def _options(parser: Any, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(command, option strings) of every option of every subcommand of ``parser``, ``--help``
    left out (``db backup`` for a nested one)."""
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _options(sub, f"{prefix}{name} ")
        elif action.option_strings and prefix and not isinstance(action, argparse._HelpAction):
            found.append((prefix.strip(), list(action.option_strings)))
    return found


def test_every_option_of_every_command_is_documented() -> None:
    """Each option of every command (``-o`` or ``--output`` alike) is named in the document that
    describes the command, so an option no document mentions is found here."""
    from fhir_alliance.cli import build_parser

    texts = {path.name: path.read_text(encoding="utf-8") for path in (ROOT / "docs").glob("*.md")}
    options = _options(build_parser())
    assert ("map", ["-o", "--output"]) in options
    service_commands = _service_commands()
    undocumented, unplaced = [], set()
    for command, strings in options:
        top = command.split()[0]
        docs = LIBRARY_COMMAND_DOCS.get(top, ["service.md"])
        if top not in LIBRARY_COMMAND_DOCS and top not in service_commands:
            unplaced.add(top)
            continue
        named = any(
            re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", texts[doc])
            for option in strings
            for doc in docs
        )
        if not named:
            undocumented.append(f"{command} {'/'.join(strings)} (docs/{', docs/'.join(docs)})")
    assert not unplaced, f"say in LIBRARY_COMMAND_DOCS where these are documented: {unplaced}"
    assert not undocumented, f"options no document names: {undocumented}"


def _service_commands() -> set[str]:
    import argparse

    from fhir_alliance_service.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return {name.split()[0] for name in _commands(parser)}


TWO_WAY_DOC = ROOT / "docs" / "two-way-sync.md"


def test_the_two_way_sync_settings_table_gives_the_code_defaults() -> None:
    """docs/two-way-sync.md's own settings table (``FHIR_ALLIANCE_`` left off) names settings
    that exist, with the defaults Settings has."""
    from fhir_alliance_service.config import load_settings

    rows = []
    for line in _section(TWO_WAY_DOC.read_text(encoding="utf-8"), "Settings").splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.split("|")[1:-1]]
            rows.append((cells[0].strip("`").lower(), cells[1].strip("`")))
    assert ("conflict_policy", "flag") in rows
    defaults = Settings()
    wrong = [
        f"{name}: docs {value!r}"
        for name, value in rows
        if name not in setting_fields()
        or getattr(load_settings({f"{ENV_PREFIX}{name.upper()}": value}), name)
        != getattr(defaults, name)
    ]
    assert not wrong, f"docs/two-way-sync.md's settings table is wrong: {wrong}"
