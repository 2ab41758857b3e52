"""FHIR REST client: transport, auth (SMART Backend Services), capabilities, paging, bundles, errors."""

from fhir_alliance.client.auth import (
    Auth,
    BasicAuth,
    BearerTokenAuth,
    NoAuth,
    SmartBackendAuth,
    load_private_key,
)
from fhir_alliance.client.bundles import BundleRequest, EntryOutcome, search_token
from fhir_alliance.client.capabilities import (
    ResourceCapabilities,
    ServerCapabilities,
    WriteStrategy,
)
from fhir_alliance.client.client import FhirClient, WriteResult, deterministic_id
from fhir_alliance.client.links import BaseUrl
from fhir_alliance.client.retry import Replay, RetryPolicy

__all__ = [
    "Auth",
    "BaseUrl",
    "BasicAuth",
    "BearerTokenAuth",
    "BundleRequest",
    "EntryOutcome",
    "FhirClient",
    "NoAuth",
    "Replay",
    "ResourceCapabilities",
    "RetryPolicy",
    "ServerCapabilities",
    "SmartBackendAuth",
    "WriteResult",
    "WriteStrategy",
    "deterministic_id",
    "load_private_key",
    "search_token",
]
