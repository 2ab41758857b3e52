"""Configuration and start-up: secrets from files, and settings that would send credentials in
clear text. A bad setting must stop start-up with one line naming the variable, never the secret
(``docs/service.md``, "Every command checks the settings first")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fhir_alliance_service.config import ConfigError, load_settings

from fhir_alliance.cli import main
from tests.service.conftest import private_key_file

SECRET_TOKEN = "ehr-bearer-s3cret-7f2c"
EHR = "https://ehr.clinic.example/fhir"


def _private_key_file(path: Path, mode: int) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return private_key_file(key, path, mode)


def _smart_environ(key_file: Path) -> dict[str, str]:
    return {
        "FHIR_ALLIANCE_FHIR_BASE_URL": EHR,
        "FHIR_ALLIANCE_FHIR_AUTH": "smart",
        "FHIR_ALLIANCE_SMART_CLIENT_ID": "fhir-alliance",
        "FHIR_ALLIANCE_SMART_KEY_ID": "key-2026",
        "FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE": str(key_file),
    }


def test_an_owner_only_smart_key_file_is_accepted(tmp_path: Path) -> None:
    """The control for the next test: mode 0600 loads."""
    key_file = _private_key_file(tmp_path / "smart-key.pem", 0o600)
    settings = load_settings(_smart_environ(key_file))
    assert settings.smart_private_key_file == str(key_file)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=["0644", "0640", "0604"])
def test_a_smart_key_file_others_can_read_stops_start_up(tmp_path: Path, mode: int) -> None:
    """The SMART private key is the clinic's credential to every patient's chart in the EHR. A
    key file that the group or everyone may read (the 0644 a plain ``openssl genpkey > key.pem``
    under umask 022 gives) is accepted today without a word. OpenSSH and PostgreSQL refuse such
    key files; start-up should too, with one line naming the variable and the mode, never the
    key. (A group-readable file that root owns may be an fsGroup secret volume's, accepted: run as
    root, the file is given another owner; see test_config_secret_file_modes.py.)"""
    key_file = _private_key_file(tmp_path / "smart-key.pem", mode)
    if os.geteuid() == 0:
        os.chown(key_file, 65534, os.getegid())
        key_file.chmod(mode)
    with pytest.raises(ConfigError) as refused:
        load_settings(_smart_environ(key_file))
    message = str(refused.value)
    assert message.startswith("FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE"), message
    assert "\n" not in message and "PRIVATE KEY" not in message


def test_a_token_file_others_can_read_stops_start_up(tmp_path: Path) -> None:
    """The same for the bearer token kept in FHIR_ALLIANCE_FHIR_TOKEN_FILE (world-readable)."""
    token_file = tmp_path / "fhir-token"
    token_file.write_text(SECRET_TOKEN + "\n", encoding="utf-8")
    token_file.chmod(0o644)
    environ = {
        "FHIR_ALLIANCE_FHIR_BASE_URL": EHR,
        "FHIR_ALLIANCE_FHIR_AUTH": "bearer",
        "FHIR_ALLIANCE_FHIR_TOKEN_FILE": str(token_file),
    }
    with pytest.raises(ConfigError) as refused:
        load_settings(environ)
    message = str(refused.value)
    assert message.startswith("FHIR_ALLIANCE_FHIR_TOKEN_FILE"), message
    assert SECRET_TOKEN not in message


def test_credentials_for_a_plain_http_ehr_are_refused_when_settings_load() -> None:
    """``fhir_auth=bearer`` with an ``http://`` EHR that is not loopback: the token would travel
    in clear text. ``load_settings`` accepts it, so ``serve`` and ``status`` start and only the
    worker's client refuses later; the check belongs with the other cross-field rules, naming
    FHIR_ALLIANCE_FHIR_BASE_URL."""
    environ = {
        "FHIR_ALLIANCE_FHIR_BASE_URL": "http://ehr.clinic.example/fhir",
        "FHIR_ALLIANCE_FHIR_AUTH": "bearer",
        "FHIR_ALLIANCE_FHIR_TOKEN": SECRET_TOKEN,
    }
    with pytest.raises(ConfigError) as refused:
        load_settings(environ)
    message = str(refused.value)
    assert message.startswith("FHIR_ALLIANCE_FHIR_BASE_URL"), message
    assert SECRET_TOKEN not in message


@pytest.mark.usefixtures("root_logging_restored")
def test_sync_once_with_credentials_over_plain_http_stops_with_one_line_naming_the_variable(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As for every other bad setting: exit 2 and one line on stderr naming the variable. Today:
    exit 1 and two lines (``credentials would travel unencrypted; use https`` /
    ``base_url: https required …``) that name no variable."""
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_BASE_URL", "http://ehr.clinic.example/fhir")
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_AUTH", "bearer")
    monkeypatch.setenv("FHIR_ALLIANCE_FHIR_TOKEN", SECRET_TOKEN)
    status = main(["sync-once"])
    err = capsys.readouterr().err
    assert SECRET_TOKEN not in err
    assert (status, err.count("\n")) == (2, 1), err
    assert err.startswith("error: FHIR_ALLIANCE_FHIR_BASE_URL"), err


@pytest.mark.parametrize(
    "line",
    [
        f'fhir_token = "{SECRET_TOKEN}"',
        'database_url = "postgresql+psycopg://alliance:s3cret-pw@db.clinic.example/alliance"',
        'database_url = "postgresql+psycopg://alliance@db/alliance?password=s3cret-pw"',
    ],
    ids=["token", "url-password", "query-password"],
)
def test_a_settings_file_holding_a_secret_that_others_can_read_stops_start_up(
    tmp_path: Path, line: str
) -> None:
    """A TOML settings file is a secret file as soon as it holds a secret: the bearer token or a
    database URL with its password. World-readable (umask 022), it was accepted without a word,
    though a ``…_FILE`` holding the same token is refused. One line naming the file variable and
    the setting, never the secret; owner-only (0600) loads."""
    config = tmp_path / "fhir-alliance.toml"
    config.write_text(f'fhir_base_url = "{EHR}"\nfhir_auth = "bearer"\n{line}\n', "utf-8")
    environ = {"FHIR_ALLIANCE_CONFIG_FILE": str(config)}
    if "fhir_token" not in line:
        environ["FHIR_ALLIANCE_FHIR_TOKEN"] = SECRET_TOKEN
    config.chmod(0o644)
    with pytest.raises(ConfigError) as refused:
        load_settings(environ)
    message = str(refused.value)
    assert message.startswith("FHIR_ALLIANCE_CONFIG_FILE"), message
    assert "chmod 600" in message and "\n" not in message
    assert SECRET_TOKEN not in message and "s3cret-pw" not in message
    config.chmod(0o600)
    assert load_settings(environ).fhir_base_url == EHR


def test_a_settings_file_without_secrets_may_be_read_by_others(tmp_path: Path) -> None:
    """The documented file (no token, no password) stays readable by the group: nothing to hide."""
    config = tmp_path / "fhir-alliance.toml"
    config.write_text(
        f'fhir_base_url = "{EHR}"\ndatabase_url = "sqlite:///{tmp_path}/a.db"\n', "utf-8"
    )
    config.chmod(0o644)
    settings = load_settings({"FHIR_ALLIANCE_CONFIG_FILE": str(config)})
    assert settings.fhir_base_url == EHR
