"""Review fixes of the settings: the purpose must be a PurposeOfUse code the library knows, the
database URL must name a supported driver (and say so without echoing the URL), and an unknown
``FHIR_ALLIANCE_*`` variable stops start-up instead of being ignored."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from fhir_alliance_service.config import (
    OTHER_VARIABLES,
    ConfigError,
    Settings,
    load_settings,
)

from fhir_alliance.cli import main
from fhir_alliance.consent.decision import KNOWN_PURPOSES
from fhir_alliance.terminology import V3_ACT_REASON

pytestmark = pytest.mark.usefixtures("root_logging_restored")

PREFIX = "FHIR_ALLIANCE_"
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-XYZZY-42"


def _refused(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- B: the purpose ------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["NOPE", "treat", "TREAT,HPAYMT", "v3-ActReason|TREAT"])
def test_an_unknown_purpose_is_refused_by_name(purpose: str) -> None:
    """FHIR_ALLIANCE_PURPOSE=NOPE stopped nothing; sync-once then dead-lettered every record."""
    message = _refused({f"{PREFIX}PURPOSE": purpose})
    assert message.startswith(f"{PREFIX}PURPOSE: expected a v3 PurposeOfUse code")


def test_a_lower_case_purpose_gets_a_hint() -> None:
    assert "did you mean TREAT?" in _refused({f"{PREFIX}PURPOSE": "treat"})


def test_every_purpose_the_consent_engine_knows_is_accepted(tmp_path: Path) -> None:
    """The codes come from the library (the same set as KNOWN_PURPOSES), from the environment,
    the TOML file and the overrides alike."""
    for system, code in sorted(KNOWN_PURPOSES):
        assert system == V3_ACT_REASON
        assert load_settings({f"{PREFIX}PURPOSE": code}).purpose == code
    config = tmp_path / "service.toml"
    config.write_text('purpose = "NOPE"\n')
    with pytest.raises(ConfigError, match=r"service\.toml: purpose: expected a v3 PurposeOfUse"):
        load_settings({f"{PREFIX}CONFIG_FILE": str(config)})
    with pytest.raises(ConfigError, match=r"^purpose: expected a v3 PurposeOfUse"):
        load_settings({}, {"purpose": "NOPE"})


def test_status_stops_on_an_unknown_purpose(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(f"{PREFIX}PURPOSE", "NOPE")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: {PREFIX}PURPOSE: expected a v3 PurposeOfUse code")


# -- C: the database URL -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg2://app:{PASSWORD}@db:5432/fa",
        f"postgresql+asyncpg://app:{PASSWORD}@db:5432/fa",
        f"mysql://app:{PASSWORD}@db/fa",
        f"sqlite+aiosqlite:///tmp/{PASSWORD}.db",
        f"app:{PASSWORD}@db:5432/fa",
        f"POSTGRESQL://app:{PASSWORD}@db:5432/fa",
    ],
)
def test_an_unsupported_database_url_says_what_is_expected_without_the_url(url: str) -> None:
    """Any +driver passed before (psycopg2 then crashed with a traceback); the message was a bare
    "invalid value". Now it says what is expected, and never holds the URL or its password."""
    message = _refused({f"{PREFIX}DATABASE_URL": url})
    assert message.startswith(f"{PREFIX}DATABASE_URL: ")
    assert "expected sqlite:///PATH or postgresql://" in message
    assert "invalid value" not in message
    assert PASSWORD not in message
    assert "@db" not in message


def test_a_database_url_from_its_file_is_named_by_the_file_variable(tmp_path: Path) -> None:
    secret = tmp_path / "database-url"
    secret.write_text(f"postgresql+psycopg2://app:{PASSWORD}@db/fa\n")
    secret.chmod(0o600)
    message = _refused({f"{PREFIX}DATABASE_URL_FILE": str(secret)})
    assert message.startswith(f"{PREFIX}DATABASE_URL_FILE: unsupported database or driver")
    assert PASSWORD not in message


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///fhir-alliance.db",
        "sqlite+pysqlite:///fhir-alliance.db",
        f"postgresql://app:{PASSWORD}@db:5432/fa",
        f"postgresql+psycopg://app:{PASSWORD}@db:5432/fa",
        f"postgres://app:{PASSWORD}@db:5432/fa",  # store.engine.normalise_url makes it psycopg 3
    ],
)
def test_supported_database_urls_are_accepted(url: str) -> None:
    assert load_settings({f"{PREFIX}DATABASE_URL": url}).database_url == url


def test_status_stops_on_psycopg2_with_one_line_and_no_traceback(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(f"{PREFIX}DATABASE_URL", f"postgresql+psycopg2://app:{PASSWORD}@db/fa")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: {PREFIX}DATABASE_URL: unsupported database or driver")
    assert PASSWORD not in err
    assert "Traceback" not in err


# -- E: unknown FHIR_ALLIANCE_* variables ----------------------------------------------------------


def test_a_misspelt_variable_stops_start_up_with_the_closest_name() -> None:
    """FHIR_ALLIANCE_FHIR_BASEURL was silently ignored (an unknown TOML key was refused)."""
    message = _refused({f"{PREFIX}FHIR_BASEURL": "https://ehr.example/fhir"})
    assert message == (
        f"{PREFIX}FHIR_BASEURL: unknown setting (did you mean {PREFIX}FHIR_BASE_URL?)"
    )


def test_an_unknown_variable_never_shows_its_value() -> None:
    message = _refused({f"{PREFIX}FHIR_TOKN": "tok-PLUGH"})
    assert message.startswith(f"{PREFIX}FHIR_TOKN: unknown setting")
    assert "tok-PLUGH" not in message


def test_status_stops_on_a_misspelt_variable(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(f"{PREFIX}WORKER_BATCHSIZE", "10")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: {PREFIX}WORKER_BATCHSIZE: unknown setting")


def test_every_setting_and_its_secret_file_variable_is_known() -> None:
    """A settings variable, or a secret's ``…_FILE``, is never refused as unknown (a value that
    does not fit may be)."""
    names = [f"{PREFIX}{name.upper()}" for name in Settings.__dataclass_fields__]
    names += [f"{PREFIX}FHIR_TOKEN_FILE", f"{PREFIX}DATABASE_URL_FILE", *sorted(OTHER_VARIABLES)]
    for name in names:
        try:
            load_settings({name: "1"})
        except ConfigError as exc:
            assert "unknown setting" not in str(exc), name


_NOT_VARIABLES = frozenset(
    {
        "FHIR_ALLIANCE_BIN",  # tests/service/test_cli.py: a Python constant, the console script
        "FHIR_ALLIANCE_BACKOFF_",  # docs/service.md: "the record settings FHIR_ALLIANCE_BACKOFF_*"
    }
)


def test_every_fhir_alliance_variable_the_project_names_is_accepted() -> None:
    """The variables the code, tests, benchmarks and docs name (settings, test and benchmark
    switches, the `check` command's secrets) never stop start-up."""
    named: set[str] = set()
    for folder in ("fhir_alliance", "service", "tests", "benchmarks", "examples", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if "node_modules" in path.parts or path.suffix not in {".py", ".md", ".toml", ".sh"}:
                continue
            if path.name == Path(__file__).name:  # names misspelt variables on purpose
                continue
            named.update(re.findall(r"FHIR_ALLIANCE_[A-Z0-9_]+", path.read_text(errors="replace")))
    named.update(re.findall(r"FHIR_ALLIANCE_[A-Z0-9_]+", (ROOT / "README.md").read_text()))
    named -= _NOT_VARIABLES
    assert f"{PREFIX}FHIR_BASE_URL" in named
    settings = {f"{PREFIX}{name.upper()}" for name in Settings.__dataclass_fields__}
    for name in sorted(named - settings):
        try:
            load_settings({name: ""})
        except ConfigError as exc:
            assert "unknown setting" not in str(exc), name


def test_the_test_environment_itself_is_accepted() -> None:
    """The variables this test run was started with (e.g. FHIR_ALLIANCE_TEST_BASE_URL) pass."""
    try:
        load_settings(os.environ)
    except ConfigError as exc:
        assert "unknown setting" not in str(exc)
