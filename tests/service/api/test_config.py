"""Tests of config.load_settings: precedence, coercion, validation and secret handling."""

from __future__ import annotations

from pathlib import Path

import pytest
from fhir_alliance_service.config import ConfigError, Settings, load_settings

PREFIX = "FHIR_ALLIANCE_"


def test_defaults_without_environment() -> None:
    """No variables and no file give the documented defaults."""
    assert load_settings({}) == Settings()


def test_environment_values_are_coerced() -> None:
    """Variables are read as text and coerced to each field's type."""
    settings = load_settings(
        {
            f"{PREFIX}FHIR_BASE_URL": "https://ehr.example/fhir/",
            f"{PREFIX}WORKER_BATCH_SIZE": "25",
            f"{PREFIX}LEASE_SECONDS": "12.5",
            f"{PREFIX}PUSH_AUDIT": "yes",
            f"{PREFIX}RECIPIENTS": "Organization/a, urn:oid:1.2|x",
            f"{PREFIX}LOG_LEVEL": "debug",
            f"{PREFIX}API_KEY_CACHE_SECONDS": "0",
            f"{PREFIX}WEB_THREADS": "2",
            f"{PREFIX}CONSOLE_IDLE_MINUTES": "30",
        }
    )
    assert settings.console_idle_minutes == 30
    assert settings.api_key_cache_seconds == 0
    assert settings.web_threads == 2
    assert settings.fhir_base_url == "https://ehr.example/fhir"
    assert settings.worker_batch_size == 25
    assert settings.lease_seconds == 12.5
    assert settings.push_audit is True
    assert settings.recipients == ("Organization/a", "urn:oid:1.2|x")
    assert settings.log_level == "DEBUG"


def test_precedence_file_then_environment_then_overrides(tmp_path: Path) -> None:
    """The TOML file overrides defaults, variables override the file, the mapping overrides all."""
    config = tmp_path / "service.toml"
    config.write_text('worker_batch_size = 7\nmax_attempts = 3\npurpose = "HPAYMT"\n')
    settings = load_settings(
        {f"{PREFIX}CONFIG_FILE": str(config), f"{PREFIX}MAX_ATTEMPTS": "4"},
        {"purpose": "ETREAT"},
    )
    assert (settings.worker_batch_size, settings.max_attempts, settings.purpose) == (
        7,
        4,
        "ETREAT",
    )


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"WORKER_BATCH_SIZE": "ten"}, "FHIR_ALLIANCE_WORKER_BATCH_SIZE"),
        ({"WORKER_BATCH_SIZE": "0"}, "FHIR_ALLIANCE_WORKER_BATCH_SIZE"),
        ({"WEB_THREADS": "0"}, "FHIR_ALLIANCE_WEB_THREADS"),
        ({"CONSOLE_IDLE_MINUTES": "0"}, "FHIR_ALLIANCE_CONSOLE_IDLE_MINUTES"),
        ({"CONSOLE_IDLE_MINUTES": "15.5"}, "FHIR_ALLIANCE_CONSOLE_IDLE_MINUTES"),
        # longer than the session's absolute 8 hours: it would never apply
        ({"CONSOLE_IDLE_MINUTES": "481"}, "FHIR_ALLIANCE_CONSOLE_IDLE_MINUTES"),
        ({"LEASE_SECONDS": "-1"}, "FHIR_ALLIANCE_LEASE_SECONDS"),
        ({"LEASE_SECONDS": "nan"}, "FHIR_ALLIANCE_LEASE_SECONDS"),
        ({"API_KEY_CACHE_SECONDS": "-1"}, "FHIR_ALLIANCE_API_KEY_CACHE_SECONDS"),
        ({"FHIR_BASE_URL": "ftp://ehr.example"}, "FHIR_ALLIANCE_FHIR_BASE_URL"),
        ({"FHIR_BASE_URL": "https://"}, "FHIR_ALLIANCE_FHIR_BASE_URL"),
        ({"FHIR_BASE_URL": "https://u:pw@ehr.example/fhir"}, "FHIR_ALLIANCE_FHIR_BASE_URL"),
        ({"LEASE_SECONDS": "inf"}, "FHIR_ALLIANCE_LEASE_SECONDS"),
        ({"CDS_SOURCE_URL": "javascript:alert(1)"}, "FHIR_ALLIANCE_CDS_SOURCE_URL"),
        ({"DATABASE_URL": "mysql://db/x"}, "FHIR_ALLIANCE_DATABASE_URL"),
        ({"FHIR_AUTH": "basic"}, "FHIR_ALLIANCE_FHIR_AUTH"),
        ({"PUSH_CONSENTS": "maybe"}, "FHIR_ALLIANCE_PUSH_CONSENTS"),
        ({"LOG_LEVEL": "LOUD"}, "FHIR_ALLIANCE_LOG_LEVEL"),
        ({"BIND": "localhost"}, "FHIR_ALLIANCE_BIND"),
        ({"BIND": "0.0.0.0:99999"}, "FHIR_ALLIANCE_BIND"),
        ({"WORKER_METRICS_BIND": "unix:/run/m.sock"}, "FHIR_ALLIANCE_WORKER_METRICS_BIND"),
        ({"WORKER_METRICS_BIND": "9464"}, "FHIR_ALLIANCE_WORKER_METRICS_BIND"),
        ({"RECIPIENTS": " , "}, "FHIR_ALLIANCE_RECIPIENTS"),
        ({"RECIPIENTS": "clinic ehr"}, "FHIR_ALLIANCE_RECIPIENTS"),
        ({"FHIR_VERSION": "3.0.2"}, "FHIR_ALLIANCE_FHIR_VERSION"),
        ({"SMART_ALGORITHM": "HS256"}, "FHIR_ALLIANCE_SMART_ALGORITHM"),
        ({"FHIR_CA_BUNDLE": "/no/such/bundle.pem"}, "FHIR_ALLIANCE_FHIR_CA_BUNDLE"),
        (
            {"BACKOFF_BASE_SECONDS": "10", "BACKOFF_MAX_SECONDS": "5"},
            "FHIR_ALLIANCE_BACKOFF_MAX_SECONDS",
        ),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(environ: dict[str, str], named: str) -> None:
    """Each bad value stops loading with one line that starts with the variable's name."""
    with pytest.raises(ConfigError) as caught:
        load_settings({PREFIX + k: v for k, v in environ.items()})
    message = str(caught.value)
    assert message.startswith(f"{named}: ")
    assert "\n" not in message


def test_bearer_needs_a_token() -> None:
    """fhir_auth=bearer without a token names the token variable."""
    with pytest.raises(ConfigError, match=r"^FHIR_ALLIANCE_FHIR_TOKEN: "):
        load_settings({f"{PREFIX}FHIR_AUTH": "bearer", f"{PREFIX}FHIR_BASE_URL": "https://e.x"})


def test_smart_needs_client_id_key_file_and_key_id(tmp_path: Path) -> None:
    """fhir_auth=smart names the client id, then the key file, then the key id, whichever is
    missing. The key id (the JWT's ``kid``) was checked only when the worker built its client,
    so ``serve`` and ``status`` started with a SMART set-up that could never authenticate."""
    base = {f"{PREFIX}FHIR_AUTH": "smart", f"{PREFIX}FHIR_BASE_URL": "https://e.x"}
    with pytest.raises(ConfigError, match=r"^FHIR_ALLIANCE_SMART_CLIENT_ID: "):
        load_settings(base)
    with pytest.raises(ConfigError, match=r"^FHIR_ALLIANCE_SMART_PRIVATE_KEY_FILE: "):
        load_settings({**base, f"{PREFIX}SMART_CLIENT_ID": "sync"})
    key = tmp_path / "key.pem"
    key.write_text("not checked here: the client loads it")
    key.chmod(0o600)  # a secret file must be its owner's alone
    without_kid = {
        **base,
        f"{PREFIX}SMART_CLIENT_ID": "sync",
        f"{PREFIX}SMART_PRIVATE_KEY_FILE": str(key),
    }
    with pytest.raises(ConfigError, match=r"^FHIR_ALLIANCE_SMART_KEY_ID: fhir_auth=smart needs"):
        load_settings(without_kid)
    settings = load_settings({**without_kid, f"{PREFIX}SMART_KEY_ID": "key-2026"})
    assert settings.smart_private_key_file == str(key)
    assert settings.smart_key_id == "key-2026"


def test_secret_from_file_variant(tmp_path: Path) -> None:
    """FHIR_ALLIANCE_FHIR_TOKEN_FILE supplies the token from the file's first line."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-value\n")
    token_file.chmod(0o600)
    settings = load_settings(
        {
            f"{PREFIX}FHIR_AUTH": "bearer",
            f"{PREFIX}FHIR_BASE_URL": "https://e.x",
            f"{PREFIX}FHIR_TOKEN_FILE": str(token_file),
        }
    )
    assert settings.fhir_token == "s3cret-token-value"


def test_secret_and_file_variant_together_are_refused(tmp_path: Path) -> None:
    """Setting a secret both directly and by file is ambiguous and refused."""
    token_file = tmp_path / "token"
    token_file.write_text("a")
    with pytest.raises(ConfigError, match=r"^FHIR_ALLIANCE_FHIR_TOKEN_FILE: "):
        load_settings({f"{PREFIX}FHIR_TOKEN": "b", f"{PREFIX}FHIR_TOKEN_FILE": str(token_file)})


def test_unreadable_secret_file_is_named(tmp_path: Path) -> None:
    """A missing secret file names the _FILE variable."""
    with pytest.raises(ConfigError, match=r"^FHIR_ALLIANCE_FHIR_TOKEN_FILE: cannot read"):
        load_settings({f"{PREFIX}FHIR_TOKEN_FILE": str(tmp_path / "missing")})


def test_secrets_never_in_repr_or_errors() -> None:
    """The token and the database password are masked in repr and never echoed in an error."""
    settings = load_settings(
        {
            f"{PREFIX}FHIR_AUTH": "bearer",
            f"{PREFIX}FHIR_BASE_URL": "https://e.x",
            f"{PREFIX}FHIR_TOKEN": "tok-XYZZY",
            f"{PREFIX}DATABASE_URL": "postgresql+psycopg://app:pw-PLUGH@db:5432/fa",
        }
    )
    shown = repr(settings)
    assert "tok-XYZZY" not in shown
    assert "pw-PLUGH" not in shown
    assert "postgresql+psycopg://app:***@db:5432/fa" in shown
    with pytest.raises(ConfigError) as caught:
        load_settings({f"{PREFIX}DATABASE_URL": "mysql://u:pw-PLUGH@db/x"})
    assert "pw-PLUGH" not in str(caught.value)


def test_config_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    """An unknown key or a bad value in the TOML file names the file and the key."""
    config = tmp_path / "service.toml"
    config.write_text("worker_batch = 3\n")
    with pytest.raises(ConfigError, match=r"service\.toml: unknown setting 'worker_batch'"):
        load_settings({f"{PREFIX}CONFIG_FILE": str(config)})
    config.write_text("max_attempts = -2\n")
    with pytest.raises(ConfigError, match=r"service\.toml: max_attempts: "):
        load_settings({f"{PREFIX}CONFIG_FILE": str(config)})
    config.write_text("max_attempts = \n")
    with pytest.raises(ConfigError, match=r"^FHIR_ALLIANCE_CONFIG_FILE: .* not valid TOML"):
        load_settings({f"{PREFIX}CONFIG_FILE": str(config)})


def test_an_unknown_config_file_key_names_the_closest_setting(tmp_path: Path) -> None:
    """A misspelt key of the TOML file is named with the setting it most likely means, as a
    misspelt FHIR_ALLIANCE_* variable is (docs/service.md, Commands)."""
    config = tmp_path / "service.toml"
    config.write_text("worker_batchsize = 3\n")
    with pytest.raises(
        ConfigError,
        match=r"service\.toml: unknown setting 'worker_batchsize' \(did you mean 'worker_batch_size'\?\)$",
    ):
        load_settings({f"{PREFIX}CONFIG_FILE": str(config)})
    config.write_text("zzz = 3\n")  # nothing close: no hint
    with pytest.raises(ConfigError, match=r"service\.toml: unknown setting 'zzz'$"):
        load_settings({f"{PREFIX}CONFIG_FILE": str(config)})


def test_unknown_override_is_refused() -> None:
    """A mapping key that is no setting is refused by name."""
    with pytest.raises(ConfigError, match=r"^databse_url: unknown setting"):
        load_settings({}, {"databse_url": "sqlite://"})


def test_settings_built_in_code_are_checked_too() -> None:
    """validated() applies the same rules to a Settings object made directly; a good one is
    returned unchanged."""
    from fhir_alliance_service.config import validated

    assert validated(Settings()) == Settings()
    with pytest.raises(ConfigError, match=r"^max_body_bytes: "):
        validated(Settings(max_body_bytes=0))
    with pytest.raises(ConfigError, match=r"^fhir_token: "):
        validated(Settings(fhir_auth="bearer", fhir_base_url="https://e.x"))


def test_the_console_idle_timeout_is_at_most_the_session_length() -> None:
    """The idle timeout may be as long as a console session (8 hours), not longer: the
    setting's bound is the session's own limit."""
    from fhir_alliance_service.console.session import SESSION_SECONDS

    assert load_settings({}, {"console_idle_minutes": SESSION_SECONDS // 60})
    with pytest.raises(ConfigError, match=r"^console_idle_minutes: "):
        load_settings({}, {"console_idle_minutes": SESSION_SECONDS // 60 + 1})
