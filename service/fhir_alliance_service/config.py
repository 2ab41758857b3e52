"""The service's settings: read once at start-up from the environment (``FHIR_ALLIANCE_*``) and an
optional file, validated, and frozen. A bad setting stops start-up with one clear line.

Secrets (the FHIR bearer token, the SMART private key) come from the environment or from files
(``…_FILE``), never from the command line or the database.

Precedence, lowest first (as Flask's ``from_prefixed_env``): the defaults below; a TOML file named
by ``FHIR_ALLIANCE_CONFIG_FILE`` (flat ``field = value`` lines, field names as below); the variables
``FHIR_ALLIANCE_<FIELD>`` (and ``FHIR_ALLIANCE_<FIELD>_FILE`` for secrets: the first line of that
file); the explicit mapping given to :func:`load_settings`. Every value is coerced from text and
validated; :class:`ConfigError` names the variable (or file key) in one line, never the secret.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from fhir_alliance.terminology import PURPOSE_OF_USE_CODES

__all__ = [
    "CONSOLE_SESSION_MINUTES",
    "ENV_PREFIX",
    "SECRET_FIELDS",
    "ConfigError",
    "Settings",
    "load_settings",
    "validated",
]

ENV_PREFIX: Final = "FHIR_ALLIANCE_"
#: How long a console session lasts at most, whatever its activity (``console.session`` reads
#: it; here so that the idle timeout's bound needs no Flask import).
CONSOLE_SESSION_MINUTES: Final = 8 * 60
CONFIG_FILE_VARIABLE: Final = "FHIR_ALLIANCE_CONFIG_FILE"
#: Fields whose values are never shown (``repr``, error messages) and may come from ``…_FILE``.
SECRET_FIELDS: Final = frozenset({"fhir_token", "database_url"})
#: ``FHIR_ALLIANCE_*`` variables that are not settings but that the project itself reads or shows
#: in its docs; any other unknown ``FHIR_ALLIANCE_*`` variable stops start-up (a misspelt setting
#: must not be ignored). The settings' own variables (and ``…_FILE`` of secrets) come from
#: :class:`Settings`.
OTHER_VARIABLES: Final = frozenset(
    {
        CONFIG_FILE_VARIABLE,  # the TOML settings file
        "FHIR_ALLIANCE_TEST_BASE_URL",  # tests and benchmarks: another FHIR server
        "FHIR_ALLIANCE_REGENERATE_GOLDEN",  # tests: rewrite golden files
        "FHIR_ALLIANCE_UPDATE_GOLDEN",  # tests: rewrite golden files (consent CLI)
        "FHIR_ALLIANCE_BENCH_RESET_COMMAND",  # benchmarks/bench_service_sync.py
        "FHIR_ALLIANCE_TOKEN",  # `fhir-alliance check --token-env` default
        "FHIR_ALLIANCE_PASSWORD",  # `fhir-alliance check --password-env` default
        "FHIR_ALLIANCE_KEY",  # docs/service.md: an API key in the shell
        "FHIR_ALLIANCE_CONSULT_KEY",  # docs/service.md: a consult API key in the shell
    }
)


class ConfigError(ValueError):
    """A setting is missing or wrong; ``str(exc)`` is one line naming the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    # -- store ---------------------------------------------------------------------------------
    database_url: str = "sqlite:///fhir-alliance.db"  # FHIR_ALLIANCE_DATABASE_URL
    #: SQLite: the longest a write waits for its turn among the file's writers; then it fails
    #: (503 with Retry-After at intake; the worker tries again later), nothing written.
    sqlite_write_wait_seconds: float = 10.0
    # -- the clinic's FHIR server --------------------------------------------------------------
    fhir_base_url: str | None = None  # FHIR_ALLIANCE_FHIR_BASE_URL; None: intake only, no sync
    fhir_auth: str = "none"  # none | bearer | smart
    fhir_token: str | None = None  # FHIR_ALLIANCE_FHIR_TOKEN or FHIR_ALLIANCE_FHIR_TOKEN_FILE
    smart_client_id: str | None = None
    smart_private_key_file: str | None = None
    smart_key_id: str | None = None
    smart_algorithm: str = "RS384"
    fhir_ca_bundle: str | None = None
    fhir_timeout_seconds: float = 30.0
    fhir_version: str | None = None  # force 4.0.1 / 5.0.0; else read from the CapabilityStatement
    # -- the consent gate ----------------------------------------------------------------------
    #: How the clinic's EHR (the recipient of every push) is named in consents: references and/or
    #: identifier tokens ``system|value``; comma-separated in the environment.
    recipients: tuple[str, ...] = ("Organization/clinic-ehr",)
    purpose: str = "TREAT"  # v3 PurposeOfUse code of every push
    push_consents: bool = True  # send consent records to the EHR as Consent resources
    push_audit: bool = False  # also send disclosures' AuditEvents and every Provenance
    push_draft_notes: bool = False  # send session notes before the therapist signs them
    # -- the worker ----------------------------------------------------------------------------
    worker_batch_size: int = 100
    lease_seconds: float = 60.0
    poll_interval_seconds: float = 2.0
    max_attempts: int = 8  # transient failures before a dead letter
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    # -- two-way sync (docs/two-way-sync.md) -----------------------------------------------------
    pull_interval_seconds: float = 30.0  # the worker pulls remote changes this often
    pull_overlap_seconds: float = 10.0  # re-read this far behind the newest lastUpdated seen
    pull_full_listing_seconds: float = 3600.0  # list everything this often (deletions)
    #: How deletions on the server are noticed: ``auto`` reads ``[type]/_history`` where the
    #: CapabilityStatement offers ``history-type``, else lists everything; ``listing`` always lists.
    pull_deletions: str = "auto"  # auto | listing
    #: Where deletions come from ``_history``, the full listing still runs this often (safety net).
    pull_safety_listing_seconds: float = 86400.0
    pull_observations: bool = False  # also pull Observations written by others (read-only)
    #: What happens to data already shared once a consent no longer permits it.
    retraction_policy: str = "none"  # none | entered-in-error | delete
    #: What happens when a resource we own was changed on the server (412 on If-Match).
    conflict_policy: str = "flag"  # overwrite | keep-remote | flag
    #: ``host:port`` where a worker process publishes its Prometheus metrics; None: not published.
    worker_metrics_bind: str | None = None
    # -- the API -------------------------------------------------------------------------------
    max_body_bytes: int = 2_000_000
    #: How long a process trusts an API key it looked up (0: look up on every request). A key
    #: revoked elsewhere stops working in every process within this many seconds.
    api_key_cache_seconds: float = 5.0
    max_records_per_request: int = 1_000
    #: Notifications (``POST /v1/fhir/notifications``) one API key may deliver per minute to one
    #: serve process; beyond it 429 with ``Retry-After`` (no consent change is lost: the next
    #: notification's gap and the scheduled pull read it).
    max_notifications_per_minute: int = 60
    cds_source_label: str = "fhir-alliance consent consult"
    cds_source_url: str | None = None
    # -- the console ---------------------------------------------------------------------------
    #: A console session not used for this long must sign in again (at most the session's
    #: absolute 8 hours, :data:`CONSOLE_SESSION_MINUTES`).
    console_idle_minutes: int = 15
    #: Serve the console over plain HTTP to other machines too (else only over TLS, or to a
    #: browser on this machine): sign-in keys and session cookies then cross the network in clear.
    console_allow_plain_http: bool = False
    # -- serve ---------------------------------------------------------------------------------
    bind: str = "127.0.0.1:8080"
    web_workers: int = 2
    #: Threads per gunicorn worker process (``gthread``): requests one process serves at once.
    web_threads: int = 4
    log_level: str = "INFO"

    def __repr__(self) -> str:
        shown = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "fhir_token" and value is not None:
                value = "***"
            elif field.name == "database_url":
                value = _mask_url_password(value)
            shown.append(f"{field.name}={value!r}")
        return f"Settings({', '.join(shown)})"


def _mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


# -- coercion ---------------------------------------------------------------------------------

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The database URL schemes the store supports: SQLite (the standard library's driver) and
#: PostgreSQL through psycopg 3 (``postgresql://`` and ``postgres://`` are normalised to
#: ``postgresql+psycopg://`` by ``store.engine.normalise_url``).
_DATABASE_SCHEMES: Final = (
    "sqlite",
    "sqlite+pysqlite",
    "postgresql",
    "postgresql+psycopg",
    "postgres",
)
_DATABASE_EXPECTED: Final = (
    "expected sqlite:///PATH or postgresql://… (psycopg 3: postgresql+psycopg://… also accepted)"
)
#: A URL scheme that may be named in a message (letters, digits, ``+ . -``; never a password).
_SHOWABLE_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,31}")
_REFERENCE: Final = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")
_TOKEN: Final = re.compile(r"[^|\s]+\|[^|\s]+")


class _Invalid(ValueError):
    """A value that does not fit; the caller adds the variable's name. ``shows_no_value``: the
    message never quotes the value, so it may be shown for a secret setting too."""

    def __init__(self, message: str, *, shows_no_value: bool = False) -> None:
        super().__init__(message)
        self.shows_no_value = shows_no_value


def _as_text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected text, got {type(value).__name__}")
    return value.strip()


def _optional_text(value: Any) -> str | None:
    text = _as_text(value)
    return text or None


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _as_text(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Invalid(f"expected true or false, got {text!r}")


def _positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Invalid("expected a positive whole number")
    if isinstance(value, int):
        number = value
    else:
        try:
            number = int(_as_text(value))
        except ValueError:
            raise _Invalid(f"expected a positive whole number, got {value!r}") from None
    if number <= 0:
        raise _Invalid(f"expected a positive whole number, got {number}")
    return number


def _finite_float(value: Any, *, allow_zero: bool) -> float:
    wanted = "a number >= 0" if allow_zero else "a positive number"
    if isinstance(value, bool):
        raise _Invalid(f"expected {wanted}")
    if isinstance(value, int | float):
        number = float(value)
    else:
        try:
            number = float(_as_text(value))
        except ValueError:
            raise _Invalid(f"expected {wanted}, got {value!r}") from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise _Invalid(f"expected {wanted}, got {value!r}")
    return number


def _positive_float(value: Any) -> float:
    return _finite_float(value, allow_zero=False)


def _non_negative_float(value: Any) -> float:
    return _finite_float(value, allow_zero=True)


def _console_idle_minutes(value: Any) -> int:
    minutes = _positive_int(value)
    if minutes > CONSOLE_SESSION_MINUTES:
        raise _Invalid(
            f"expected at most {CONSOLE_SESSION_MINUTES} (a console session's 8 hours), "
            f"got {minutes}"
        )
    return minutes


def _http_url(value: Any) -> str | None:
    text = _optional_text(value)
    if text is None:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid("expected an http(s) URL with a host")
    if parts.query or parts.fragment:
        raise _Invalid("expected a base URL without query or fragment")
    if parts.username or parts.password:
        raise _Invalid("credentials do not belong in the URL (use fhir_auth and fhir_token)")
    return text.rstrip("/")


def _database_url(value: Any) -> str:
    """A URL of a supported database and driver; the messages never quote the URL (it may hold a
    password), at most its scheme."""
    if not isinstance(value, str):
        raise _Invalid("expected text", shows_no_value=True)
    text = value.strip()
    scheme, sep, _ = text.partition("://")
    if not sep:
        raise _Invalid(f"not a URL: {_DATABASE_EXPECTED}", shows_no_value=True)
    if scheme not in _DATABASE_SCHEMES:
        named = f" {scheme!r}" if _SHOWABLE_SCHEME.fullmatch(scheme) else ""
        raise _Invalid(
            f"unsupported database or driver{named}: {_DATABASE_EXPECTED}", shows_no_value=True
        )
    return text


def _choice(*allowed: str) -> Callable[[Any], str]:
    def coerce(value: Any) -> str:
        text = _as_text(value)
        if text not in allowed:
            raise _Invalid(f"expected one of {', '.join(allowed)}, got {text!r}")
        return text

    return coerce


def _optional_choice(*allowed: str) -> Callable[[Any], str | None]:
    def coerce(value: Any) -> str | None:
        text = _optional_text(value)
        if text is not None and text not in allowed:
            raise _Invalid(f"expected one of {', '.join(allowed)}, got {text!r}")
        return text

    return coerce


def _existing_file(value: Any) -> str | None:
    text = _optional_text(value)
    if text is not None and not Path(text).is_file():
        raise _Invalid(f"no readable file at {text!r}")
    return text


def _too_open(path: str) -> str | None:
    """Why a file holding a secret must not be used (OpenSSH and PostgreSQL refuse such key files
    too): others may read it, or anyone but its owner may change it. None when only its owner
    may read it, or when only its group may as well and that is how a Kubernetes secret volume
    under ``fsGroup`` shows it (``_group_may_read``); also None when it cannot be found (reading
    it then says so)."""
    try:
        found = Path(path).stat()
    except OSError:
        return None
    mode = stat.S_IMODE(found.st_mode)
    if mode & stat.S_IROTH:
        return f"the file {path!r} may be read by others (mode {mode:04o}); chmod 600 it"
    if mode & (stat.S_IWGRP | stat.S_IWOTH):  # another user could put a secret of theirs there
        who = "others" if mode & stat.S_IWOTH else "its group"
        return f"the file {path!r} may be changed by {who} (mode {mode:04o}); chmod 600 it"
    if not mode & stat.S_IRGRP or _group_may_read(found):
        return None
    return (
        f"the file {path!r} may be read by its group (mode {mode:04o}, owner uid {found.st_uid},"
        f" group gid {found.st_gid}); chmod 600 it (a group may read only a file that root owns,"
        " that the group cannot write, and whose group this process is in)"
    )


def _group_may_read(found: os.stat_result) -> bool:
    """Whether a group-readable secret file is still safe: PostgreSQL's rule for a root-owned
    ``ssl_key_file`` (up to 0640), narrowed to a group this process is in. It is how kubelet
    lays out a secret volume of a pod with ``securityContext.fsGroup``: files owned by root, group
    the fsGroup (a supplementary group of the pod's processes), mode ``defaultMode | 0440``. The
    group may read, nothing more, and nobody else may do anything."""
    mode = stat.S_IMODE(found.st_mode)
    if found.st_uid != 0 or mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO):
        return False
    return found.st_gid == os.getegid() or found.st_gid in os.getgroups()


def _secret_file(value: Any) -> str | None:
    """An existing file holding a secret (the SMART private key), readable by its owner only (or
    its group, as ``_too_open`` allows)."""
    text = _existing_file(value)
    if text is not None and (why := _too_open(text)):
        raise _Invalid(why)
    return text


def _secret(value: Any) -> str | None:
    if not isinstance(value, str):
        raise _Invalid("expected text")
    return value.strip() or None


def _recipients(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else _as_text(value).split(",")
    recipients = tuple(_as_text(i) for i in items if not isinstance(i, str) or i.strip())
    if not recipients:
        raise _Invalid("expected at least one recipient")
    for recipient in recipients:
        if not (_REFERENCE.fullmatch(recipient) or _TOKEN.fullmatch(recipient)):
            raise _Invalid(
                f"expected references (Organization/x) or identifiers (system|value), got {recipient!r}"
            )
    return recipients


def _purpose(value: Any) -> str:
    """A v3 PurposeOfUse code the consent engine knows (case-sensitive, as codes are)."""
    text = _as_text(value)
    if text not in PURPOSE_OF_USE_CODES:
        hint = f" (did you mean {text.upper()}?)" if text.upper() in PURPOSE_OF_USE_CODES else ""
        raise _Invalid(
            f"expected a v3 PurposeOfUse code such as TREAT, ETREAT, HPAYMT, HOPERAT or HRESCH, "
            f"got {text!r}{hint}"
        )
    return text


def _label(value: Any) -> str:
    text = _as_text(value)
    if not text:
        raise _Invalid("expected a non-empty label")
    return text


def _log_level(value: Any) -> str:
    text = _as_text(value).upper()
    if text not in _LOG_LEVELS:
        raise _Invalid(f"expected one of {', '.join(_LOG_LEVELS)}, got {text!r}")
    return text


def _bind(value: Any) -> str:
    text = _as_text(value)
    if text.startswith("unix:") and len(text) > len("unix:"):
        return text
    host, sep, port = text.rpartition(":")
    # ASCII digits only: a superscript passes isdigit() but not int().
    if not (sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise _Invalid(f"expected host:port or unix:PATH, got {text!r}")
    return text


def _optional_host_port(value: Any) -> str | None:
    text = _optional_text(value)
    if text is None:
        return None
    if text.startswith("unix:"):
        raise _Invalid(f"expected host:port (a TCP address, not unix:PATH), got {text!r}")
    try:
        return _bind(text)
    except _Invalid:
        raise _Invalid(f"expected host:port with a port from 1 to 65535, got {text!r}") from None


_COERCE: Final[dict[str, Callable[[Any], Any]]] = {
    "database_url": _database_url,
    "sqlite_write_wait_seconds": _positive_float,
    "fhir_base_url": _http_url,
    "fhir_auth": _choice("none", "bearer", "smart"),
    "fhir_token": _secret,
    "smart_client_id": _optional_text,
    "smart_private_key_file": _secret_file,
    "smart_key_id": _optional_text,
    "smart_algorithm": _choice("RS384", "ES384"),
    "fhir_ca_bundle": _existing_file,
    "fhir_timeout_seconds": _positive_float,
    "fhir_version": _optional_choice("4.0.1", "5.0.0"),
    "recipients": _recipients,
    "purpose": _purpose,
    "push_consents": _as_bool,
    "push_audit": _as_bool,
    "push_draft_notes": _as_bool,
    "worker_batch_size": _positive_int,
    "lease_seconds": _positive_float,
    "poll_interval_seconds": _positive_float,
    "max_attempts": _positive_int,
    "pull_interval_seconds": _positive_float,
    "pull_overlap_seconds": _non_negative_float,
    "pull_full_listing_seconds": _positive_float,
    "pull_deletions": _choice("auto", "listing"),
    "pull_safety_listing_seconds": _positive_float,
    "pull_observations": _as_bool,
    "retraction_policy": _choice("none", "entered-in-error", "delete"),
    "conflict_policy": _choice("overwrite", "keep-remote", "flag"),
    "backoff_base_seconds": _positive_float,
    "backoff_max_seconds": _positive_float,
    "max_body_bytes": _positive_int,
    "api_key_cache_seconds": _non_negative_float,
    "max_records_per_request": _positive_int,
    "max_notifications_per_minute": _positive_int,
    "cds_source_label": _label,
    "cds_source_url": _http_url,
    "console_idle_minutes": _console_idle_minutes,
    "console_allow_plain_http": _as_bool,
    "bind": _bind,
    "worker_metrics_bind": _optional_host_port,
    "web_workers": _positive_int,
    "web_threads": _positive_int,
    "log_level": _log_level,
}


def _variable(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


def _read_secret_file(path: str, variable: str) -> str:
    if why := _too_open(path):
        raise ConfigError(f"{variable}: {why}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{variable}: cannot read {path!r} ({type(exc).__name__})") from None
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    if not first_line:
        raise ConfigError(f"{variable}: the file {path!r} is empty")
    return first_line


def _from_file(environ: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    path = environ.get(CONFIG_FILE_VARIABLE, "").strip()
    if not path:
        return {}, ""
    try:
        with Path(path).open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(
            f"{CONFIG_FILE_VARIABLE}: cannot read {path!r} ({type(exc).__name__})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{CONFIG_FILE_VARIABLE}: {path!r} is not valid TOML ({exc})") from None
    for key in data:
        if key not in _COERCE:
            close = difflib.get_close_matches(key, sorted(_COERCE), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown setting {key!r}{hint}")
    held = sorted(key for key, value in data.items() if _is_secret_value(key, value))
    if held and (why := _too_open(path)):
        raise ConfigError(f"{CONFIG_FILE_VARIABLE}: holds {held[0]}, and {why}")
    return data, path


def _is_secret_value(key: str, value: Any) -> bool:
    """Whether a settings file's ``key = value`` is a secret: the bearer token, or a database URL
    carrying a password (in its user part or its query)."""
    if key == "fhir_token":
        return True
    if key != "database_url" or not isinstance(value, str):
        return False
    parts = urlsplit(value)
    try:
        password = parts.password
    except ValueError:  # a malformed URL is refused later, at its setting
        password = None
    return bool(password) or "password=" in parts.query.lower()


def _known_variables() -> frozenset[str]:
    names = {_variable(name) for name in _COERCE}
    names.update(f"{_variable(name)}_FILE" for name in SECRET_FIELDS)
    return frozenset(names | OTHER_VARIABLES)


def _refuse_unknown_variables(environ: Mapping[str, str]) -> None:
    """A ``FHIR_ALLIANCE_*`` variable that is no setting is most likely a misspelt one: stop, as
    for an unknown key of the TOML file, naming the closest known variable."""
    known = _known_variables()
    unknown = sorted(n for n in environ if n.startswith(ENV_PREFIX) and n not in known)
    if not unknown:
        return
    variable = unknown[0]
    close = difflib.get_close_matches(variable, sorted(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"{variable}: unknown setting{hint}")


def _from_environ(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    _refuse_unknown_variables(environ)
    found: dict[str, tuple[Any, str]] = {}
    for name in _COERCE:
        variable = _variable(name)
        if variable in environ:
            found[name] = (environ[variable], variable)
        if name in SECRET_FIELDS and f"{variable}_FILE" in environ:
            file_variable = f"{variable}_FILE"
            if variable in environ:
                raise ConfigError(f"{file_variable}: set either {variable} or {file_variable}")
            found[name] = (_read_secret_file(environ[file_variable], file_variable), file_variable)
    return found


def load_settings(
    environ: Mapping[str, str] = os.environ, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Defaults, then the TOML file, then ``FHIR_ALLIANCE_*`` variables, then ``overrides``;
    coerced, validated, frozen."""
    raw: dict[str, tuple[Any, str]] = {}
    file_values, file_path = _from_file(environ)
    for name, value in file_values.items():
        raw[name] = (value, f"{file_path}: {name}")
    raw.update(_from_environ(environ))
    for name, value in (overrides or {}).items():
        if name not in _COERCE:
            raise ConfigError(f"{name}: unknown setting")
        raw[name] = (value, name)
    values: dict[str, Any] = {}
    for name, (value, source) in raw.items():
        if value is None:
            values[name] = None
            continue
        try:
            values[name] = _COERCE[name](value)
        except _Invalid as exc:
            shown = name not in SECRET_FIELDS or exc.shows_no_value
            detail = str(exc) if shown else "invalid value"
            raise ConfigError(f"{source}: {detail}") from None
    settings = Settings(**values)
    _check_together(settings, {name: source for name, (_, source) in raw.items()})
    return settings


def validated(settings: Settings) -> Settings:
    """``settings`` built in code (not read by :func:`load_settings`), checked by the same rules."""
    return load_settings({}, dataclasses.asdict(settings))


def _check_together(settings: Settings, sources: Mapping[str, str]) -> None:
    """Rules across fields; the message names the variable to set."""

    def name(field: str) -> str:
        return sources.get(field, _variable(field))

    if settings.fhir_auth == "bearer" and not settings.fhir_token:
        raise ConfigError(
            f"{name('fhir_token')}: fhir_auth=bearer needs a token (or {_variable('fhir_token')}_FILE)"
        )
    if settings.fhir_auth == "smart":
        if not settings.smart_client_id:
            raise ConfigError(f"{name('smart_client_id')}: fhir_auth=smart needs a client id")
        if not settings.smart_private_key_file:
            raise ConfigError(
                f"{name('smart_private_key_file')}: fhir_auth=smart needs a private key file"
            )
        if not settings.smart_key_id:
            raise ConfigError(
                f"{name('smart_key_id')}: fhir_auth=smart needs a key id (the kid under which "
                "the FHIR server knows the key)"
            )
    if settings.fhir_auth != "none" and not settings.fhir_base_url:
        raise ConfigError(f"{name('fhir_base_url')}: fhir_auth={settings.fhir_auth} needs a URL")
    if settings.fhir_auth != "none" and settings.fhir_base_url:
        # imported here: the package imports the FHIR client (requests, PyJWT), which
        # `fhir-alliance --help` must not load
        from fhir_alliance.client.links import is_loopback_host

        base = urlsplit(settings.fhir_base_url)
        if base.scheme == "http" and not is_loopback_host(base.hostname or ""):
            raise ConfigError(
                f"{name('fhir_base_url')}: fhir_auth={settings.fhir_auth} sends credentials, "
                "which plain http would carry unencrypted: use https (http only to a loopback host)"
            )
    if settings.backoff_max_seconds < settings.backoff_base_seconds:
        raise ConfigError(
            f"{name('backoff_max_seconds')}: must not be less than backoff_base_seconds"
        )
