"""The sync: claim → gate → map → validate → send → record (``worker``), the consent gate
(``gate``), the retry policy (``retry``) and the target FHIR server (``target``)."""

from fhir_alliance_service.sync.gate import GateResult, HoldReason, gate_item
from fhir_alliance_service.sync.target import client_from_settings, target_fhir_version
from fhir_alliance_service.sync.worker import BatchReport, Worker, sync_once

__all__ = [
    "BatchReport",
    "GateResult",
    "HoldReason",
    "Worker",
    "client_from_settings",
    "gate_item",
    "sync_once",
    "target_fhir_version",
]
