"""The service's settings: read once at start-up from the environment (``FHIR_ALLIANCE_*``) and an
optional file, validated, and frozen. A bad setting stops start-up with one clear line.

Secrets (the FHIR bearer token, the SMART private key) come from the environment or from files
(``…_FILE``), never from the command line or the database.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConfigError", "Settings"]


class ConfigError(ValueError):
    """A setting is missing or wrong; ``str(exc)`` is one line naming the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    # -- store ---------------------------------------------------------------------------------
    database_url: str = "sqlite:///fhir-alliance.db"  # FHIR_ALLIANCE_DATABASE_URL
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
    push_audit: bool = False  # also send AuditEvent / Provenance resources
    # -- the worker ----------------------------------------------------------------------------
    worker_batch_size: int = 100
    lease_seconds: float = 60.0
    poll_interval_seconds: float = 2.0
    max_attempts: int = 8  # transient failures before a dead letter
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    # -- the API -------------------------------------------------------------------------------
    max_body_bytes: int = 2_000_000
    max_records_per_request: int = 1_000
    cds_source_label: str = "fhir-alliance consent consult"
    cds_source_url: str | None = None
    # -- serve ---------------------------------------------------------------------------------
    bind: str = "127.0.0.1:8080"
    web_workers: int = 2
    log_level: str = "INFO"
